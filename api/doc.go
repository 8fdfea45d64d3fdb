// Package api owns musicd's HTTP interface.
//
// It serves the operational endpoints every instance has: /healthz (liveness: the process serves
// HTTP), /readyz (readiness: every dependency the daemon uses answers a real request), /metrics
// (Prometheus text format from the injected registry) and /version; and the native REST API
// under /v1 (keyspaces, tables, rows, locks, compare-and-set), described by the OpenAPI document
// it serves at /v1/openapi.json (openapi.yaml, rendered in docs/api.md), with optional bearer
// tokens per keyspace, TLS, and one table mapping errors to statuses and stable codes (v1.go).
// The MUSIC v2 compatibility layer under /MUSIC/rest/v2 will live here too.
//
// The package declares what it consumes (Checker, State) and never dials a dependency itself:
// the daemon wires them in.
package api
