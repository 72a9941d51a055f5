//! Flags and readers for the production backends (OpenBao, BIND, the Kubernetes stand-in).

use crate::*;

/// `cfm serve` flags that keep plugins' secrets in `bao` (reached at `vault_address`, its
/// token written into `dir`), their DNS records in `bind` and their cluster objects in
/// `kube`.
pub fn production_backends(
    dir: &Path,
    bao: &cfm_host::testing::OpenBao,
    vault_address: &str,
    bind: &cfm_host::testing::Bind,
    kube: &cfm_standins::kubernetes::KubeApi,
) -> Vec<String> {
    let mut flags = secrets_and_dns_backends(dir, bao, vault_address, bind);
    flags.extend(["--kubernetes".to_string(), kube.url.clone()]);
    flags
}

/// The same without Kubernetes: cluster objects stay in the data directory's folder per
/// cell.
pub fn secrets_and_dns_backends(
    dir: &Path,
    bao: &cfm_host::testing::OpenBao,
    vault_address: &str,
    bind: &cfm_host::testing::Bind,
) -> Vec<String> {
    let token_file = dir.join("vault.token");
    std::fs::write(&token_file, &bao.token).unwrap();
    [
        "--vault-addr",
        vault_address,
        "--vault-token-file",
        &token_file.display().to_string(),
        "--dns-server",
        &bind.address().to_string(),
        "--dns-tsig-key-file",
        &bind.key_file.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The role id and secret id handed to participant `pc`'s runtime: the Secret
/// `vault-access` in its namespace, as the API server stores it (base64 `data`).
pub fn handed_over(kube: &cfm_standins::kubernetes::KubeApi, pc: &str) -> (String, String) {
    use base64::Engine;
    let secret = kube
        .object("v1", "secrets", &format!("cfm-{pc}"), "vault-access")
        .unwrap_or_else(|| panic!("no vault-access Secret for {pc}: {:?}", kube.names()));
    let field = |name: &str| {
        let encoded = secret["data"][name].as_str().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap()
    };
    (field("roleId"), field("secretId"))
}
