//! The built-in plugins' configuration, as built by scripts/build-plugins.sh, and edits of it.

use crate::*;

/// A copy of the built-in plugins' configuration in `dir`, with plugin paths made
/// absolute and `edit` applied to each `[[plugin]]` table.
pub fn plugins_config_with(dir: &Path, mut edit: impl FnMut(&mut toml::Table)) -> PathBuf {
    let source = plugins_config();
    let plugin_dir = source.parent().unwrap();
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&source).unwrap()).unwrap();
    for plugin in config["plugin"].as_array_mut().unwrap() {
        let plugin = plugin.as_table_mut().unwrap();
        let path = plugin_dir.join(plugin["path"].as_str().unwrap());
        plugin.insert("path".into(), path.display().to_string().into());
        edit(plugin);
    }
    let path = dir.join("plugins.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

/// For [`plugins_config_with`]: the vault plugin issues each runtime a credential for its
/// own secrets (which needs a grant of the participant's whole folder).
pub fn runtime_access(plugin: &mut toml::Table) {
    if plugin["name"].as_str() != Some("vault") {
        return;
    }
    plugin["settings"]
        .as_table_mut()
        .unwrap()
        .insert("runtimeAccess".into(), true.into());
    plugin["grants"].as_table_mut().unwrap().insert(
        "secrets".into(),
        toml::Value::Array(vec!["participants/{participantContextId}/**".into()]),
    );
}

/// The built-in plugins' configuration, built by scripts/build-plugins.sh.
pub fn plugins_config() -> PathBuf {
    // Beside the test's own build, not `CFM_BIN`'s: a binary under test may live anywhere.
    let plugins = crate::profile_dir()
        .parent()
        .unwrap()
        .join("plugins/plugins.toml");
    assert!(
        plugins.exists(),
        "{} is missing: build the plugins with scripts/build-plugins.sh",
        plugins.display()
    );
    plugins
}
