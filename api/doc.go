// Package api owns musicd's HTTP interface.
//
// Today it serves the operational endpoints every instance has: /healthz (liveness: the process
// serves HTTP), /readyz (readiness: every dependency the daemon uses answers a real request),
// /metrics (Prometheus text format from the injected registry) and /version. The native REST API
// (/v1, described by an OpenAPI document), the MUSIC v2 compatibility layer under
// /MUSIC/rest/v2, authentication and the mapping of errors to HTTP statuses will live here too.
//
// The package declares what it consumes (Checker) and never dials a dependency itself: the daemon
// wires the checks in.
package api
