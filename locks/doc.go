// Package locks owns mutual exclusion across sites: lock references, acquire (blocking with a
// deadline, or try), release, holders, leases and forced release, elections for the singletons of
// a site, and the fencing tokens (epochs) that strictly increase each time a lock changes hands.
// ZooKeeper and in-process implementations will share one conformance suite.
//
// Today the package holds the ZooKeeper connection (configuration, session, readiness check) that
// the lock service will be built on. It imports no other package of the project (see
// docs/ARCHITECTURE.md for the leaf helpers under internal/).
package locks
