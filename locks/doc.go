// Package locks owns mutual exclusion across sites: lock references, acquire (blocking with a
// deadline, or try), release, holders, leases and forced release, watches, elections for the
// singletons of a site, and the fencing tokens (epochs) that strictly increase each time a lock
// changes hands.
//
// Service is the contract; NewZooKeeperService (distributed mode) and NewInProcess (embedded
// mode) implement it and pass one conformance suite (conformance_test.go). In short:
//   - A reference is a place in a name's FIFO queue (write or read, with an optional lease and an
//     owner label). It holds when no conflicting reference is ahead of it; the grant carries a
//     fencing token (ZooKeeper: the zxid that created the reference) and PreviousUnclean, set when
//     the previous write holder did not release (lease expiry, forced release, lost session), so
//     that the new holder catches up before it trusts the state (DESIGN.md invariant 6).
//   - Leases are judged by ZooKeeper's clock (the reference node's mtime), by whichever daemon
//     looks: the waiter behind the reference, or any daemon's reaper. References outlive the REST
//     connection that created them, not the ZooKeeper session of the daemon that created them: a
//     lost session loses every lock it held, and Grant.Lost says so.
//   - Waiters watch only the reference that blocks them (no herd effect).
//
// docs/locks.md explains the model; docs/decisions/0004-locks.md the choices. The package imports
// no other package of the project (see docs/ARCHITECTURE.md for the leaf helpers under
// internal/).
package locks
