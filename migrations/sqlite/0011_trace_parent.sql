-- The W3C traceparent of the span that started an orchestration (its REST call), when
-- traces are exported: every task of the orchestration carries it to the agent hosts.
ALTER TABLE orchestrations ADD COLUMN trace_parent TEXT;
