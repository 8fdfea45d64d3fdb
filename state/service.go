package state

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// Consistency is what a REST operation asks for (DESIGN.md, "Consistency of REST operations").
type Consistency uint8

const (
	// Eventual: one round trip to the local site; last-writer-wins across sites.
	Eventual Consistency = iota + 1
	// Critical: only from the current holder of the key's lock, checked by the journal with the
	// holder's fencing token; reads see the latest acknowledged critical write from any site.
	Critical
	// Atomic: take the key's lock (waiting up to a deadline), do the operation, release.
	Atomic
)

var consistencyNames = map[Consistency]string{Eventual: "eventual", Critical: "critical", Atomic: "atomic"}

func (c Consistency) String() string {
	if n, ok := consistencyNames[c]; ok {
		return n
	}
	return fmt.Sprintf("consistency(%d)", uint8(c))
}

// ParseConsistency parses "eventual", "critical" or "atomic" ("" is eventual).
func ParseConsistency(s string) (Consistency, error) {
	if s == "" {
		return Eventual, nil
	}
	for c, n := range consistencyNames {
		if strings.EqualFold(s, n) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("%w: consistency %q: want eventual, critical or atomic", ErrInvalid, s)
}

// LockRef is the opaque, URL-safe handle of a lock reference on a key: what a REST client gets
// from CreateLock and passes to the other lock calls and to critical operations.
type LockRef string

const refSep = "~"

func makeRef(r locks.Ref) LockRef { return LockRef(r.Name + refSep + r.ID) }

// parse splits the handle into the lock's name and the reference's ID.
func (r LockRef) parse() (locks.Ref, error) {
	name, id, ok := strings.Cut(string(r), refSep)
	if !ok || id == "" || strings.Contains(id, refSep) || !strings.HasPrefix(name, lockPrefix) {
		return locks.Ref{}, fmt.Errorf("%w: lock reference %q is not one musicd issued", ErrInvalid, string(r))
	}
	if err := locks.ValidateName(name); err != nil {
		return locks.Ref{}, fmt.Errorf("%w: lock reference %q: %v", ErrInvalid, string(r), err)
	}
	return locks.Ref{Name: name, ID: id}, nil
}

// ID returns the reference's ID within its lock's queue ("" for a malformed reference).
func (r LockRef) ID() string {
	ref, err := r.parse()
	if err != nil {
		return ""
	}
	return ref.ID
}

// LockRefFor rebuilds the handle of the reference with ID id on the lock of key in table t: the
// inverse of ID for a caller that knows the key (the MUSIC v2 API carries the key and the ID in
// its lock ids, so that any daemon turns one back into a LockRef without a lookup). An id that is
// not a plain reference ID wraps ErrInvalid; whether the reference exists is for the lock calls.
func LockRefFor(t Table, key journal.Row, id string) (LockRef, error) {
	if err := checkKey(t, key); err != nil {
		return "", err
	}
	ref := LockRef(newKeyID(t, key).lockName() + refSep + id)
	if _, err := ref.parse(); err != nil {
		return "", err
	}
	return ref, nil
}

// Keyspace returns the keyspace the reference's key belongs to ("" for a malformed reference).
func (r LockRef) Keyspace() string {
	ref, err := r.parse()
	if err != nil {
		return ""
	}
	ks, _, _ := strings.Cut(strings.TrimPrefix(ref.Name, lockPrefix), ".")
	return ks
}

// Condition makes a write a compare-and-set. Every part that is set must hold.
type Condition struct {
	// Version: the row must exist with this version (If-Match).
	Version int64
	// Absent: the row must not exist (If-None-Match: *).
	Absent bool
	// Exists: the row must exist, whatever its version (If-Match: *).
	Exists bool
	// Columns: each column must have this value (null: the column is null; the row must exist).
	Columns []Filter
}

func (c *Condition) empty() bool {
	return c == nil || (c.Version == 0 && !c.Absent && !c.Exists && len(c.Columns) == 0)
}

// WriteRequest is one row write.
type WriteRequest struct {
	Keyspace, Table string
	// Key holds every primary key column in KeyColumns order (ParseKey).
	Key journal.Row
	// Op: MutPut (replace the row), MutUpdate (set some columns), MutDelete.
	Op MutationOp
	// Values: regular columns (MutPut, MutUpdate).
	Values      journal.Row
	Consistency Consistency
	// Lock: the caller's lock reference on the key (Critical).
	Lock LockRef
	// Wait bounds how long Atomic waits for the lock (0: the service's default).
	Wait time.Duration
	// If makes the write conditional (compare-and-set). A conditional write runs under the key's
	// lock: the caller's (Critical) or one taken for the request (Eventual or Atomic).
	If *Condition
	// RequestID is recorded in the journal entry (Source.RequestID).
	RequestID string
}

// WriteResult describes an acknowledged write.
type WriteResult struct {
	// Version is the row's new version (its write timestamp, microseconds).
	Version int64
	// Stream and Seq locate the write's journal entry.
	Stream string
	Seq    uint64
}

// ReadRequest is a read of one row.
type ReadRequest struct {
	Keyspace, Table string
	Key             journal.Row
	Consistency     Consistency
	Lock            LockRef
	Wait            time.Duration
}

// LockGrant is a granted lock reference.
type LockGrant struct {
	Ref   LockRef
	Token uint64
	// PreviousUnclean: the previous holder did not release; the key was brought up to date
	// (CaughtUp journal entries re-applied) before the grant was returned.
	PreviousUnclean bool
	CaughtUp        int
}

// LockHolder describes a current holder of a key's lock.
type LockHolder struct {
	Ref   LockRef       `json:"ref"`
	Type  string        `json:"type"`
	Token uint64        `json:"token"`
	Owner string        `json:"owner,omitempty"`
	Lease time.Duration `json:"-"`
}

// LockedError is ErrLocked with the lock's holders at the deadline.
type LockedError struct {
	Holders []LockHolder
}

func (e *LockedError) Error() string {
	if len(e.Holders) == 0 {
		return "locked: the lock was not granted before the deadline"
	}
	return fmt.Sprintf("locked: held by %s (token %d) at the deadline", e.Holders[0].Ref, e.Holders[0].Token)
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// lockPrefix starts the name of every key lock: kv.<keyspace>.<table>.<key hash>.
const lockPrefix = "kv."

var errClosed = errors.New("state: service closed")
