package queue

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/musicd/musicd/state"
)

// Errors of the queue. They wrap the state package's sentinels, which the REST API maps to
// statuses (ErrInvalid 400, ErrNotFound 404, ErrExists 409, ErrNotHolder 409, ErrUnavailable 503).
var (
	// ErrNotClaimant: the job is not claimed with the token given (another worker claimed it, it
	// was completed or released, or the token is wrong).
	ErrNotClaimant = fmt.Errorf("%w: the job is not claimed with this token", state.ErrNotHolder)
	// ErrLeaseExpired: the job's lease ran out; it goes back to the queue (or to the dead
	// letters), and the caller may no longer complete, release or extend it.
	ErrLeaseExpired = fmt.Errorf("%w: the lease has expired", state.ErrNotHolder)
)

// Limits of queue definitions and jobs.
const (
	MaxPriorities  = 16
	MaxShards      = 256
	MaxAttemptsCap = 1000
	MaxPayloadCap  = 1 << 20
	maxIDLen       = 128
	// MaxPeek is the most jobs one peek or dead-letter listing returns.
	MaxPeek = 1000
)

// Def is a queue's definition. Shards and Priorities are fixed when the queue is created: a
// job's shard is a hash of its id modulo Shards.
type Def struct {
	// Namespace is the keyspace the queue belongs to (tokens grant access by keyspace).
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Priorities is the number of priority levels: 0 (lowest) to Priorities-1. Default 1.
	Priorities int `json:"priorities"`
	// Shards spreads the jobs over that many Cassandra partitions, so that many workers do not
	// contend on one. Default 16.
	Shards int `json:"shards"`
	// MaxAttempts is how many times a job is claimed before a failure (a release marked failed,
	// or a lease that ran out) sends it to the dead letters. Default 5.
	MaxAttempts int `json:"max_attempts"`
	// Lease is the default lease of a claim. Default 30s.
	Lease Duration `json:"lease"`
	// MaxPayload bounds a job's payload in bytes. Default 64 KiB, at most 1 MiB.
	MaxPayload int `json:"max_payload_bytes"`
	// DedupWindow is how long a client-supplied job id is remembered: enqueuing the same id
	// again within it is answered with the first job and changes nothing. Default 24h.
	DedupWindow Duration `json:"dedup_window"`
	// Schema is an opaque description of the jobs' payload that an API layer keeps with the
	// queue (the MUSIC v2 priorityq layer: its table's columns and keys, as JSON); "" for none.
	Schema string `json:"schema,omitempty"`
	// Created is when the queue was created (microseconds); a queue dropped and created again
	// under the same name has another.
	Created int64 `json:"created"`
}

// Key is the queue's name in storage: namespace.name.
func (d Def) Key() string { return d.Namespace + "." + d.Name }

// WithDefaults fills the zero fields.
func (d Def) WithDefaults() Def {
	if d.Priorities == 0 {
		d.Priorities = 1
	}
	if d.Shards == 0 {
		d.Shards = 16
	}
	if d.MaxAttempts == 0 {
		d.MaxAttempts = 5
	}
	if d.Lease == 0 {
		d.Lease = Duration(30 * time.Second)
	}
	if d.MaxPayload == 0 {
		d.MaxPayload = 64 << 10
	}
	if d.DedupWindow == 0 {
		d.DedupWindow = Duration(24 * time.Hour)
	}
	return d
}

// Validate checks a definition after WithDefaults.
func (d Def) Validate() error {
	if err := ValidateName(d.Namespace, d.Name); err != nil {
		return err
	}
	switch {
	case d.Priorities < 1 || d.Priorities > MaxPriorities:
		return fmt.Errorf("%w: priorities must be 1-%d, not %d", state.ErrInvalid, MaxPriorities, d.Priorities)
	case d.Shards < 1 || d.Shards > MaxShards:
		return fmt.Errorf("%w: shards must be 1-%d, not %d", state.ErrInvalid, MaxShards, d.Shards)
	case d.MaxAttempts < 1 || d.MaxAttempts > MaxAttemptsCap:
		return fmt.Errorf("%w: max_attempts must be 1-%d, not %d", state.ErrInvalid, MaxAttemptsCap, d.MaxAttempts)
	case d.Lease < Duration(100*time.Millisecond) || d.Lease > Duration(24*time.Hour):
		return fmt.Errorf("%w: lease must be 100ms-24h, not %s", state.ErrInvalid, time.Duration(d.Lease))
	case d.MaxPayload < 1 || d.MaxPayload > MaxPayloadCap:
		return fmt.Errorf("%w: max_payload_bytes must be 1-%d, not %d", state.ErrInvalid, MaxPayloadCap, d.MaxPayload)
	case d.DedupWindow < Duration(time.Second) || d.DedupWindow > Duration(30*24*time.Hour):
		return fmt.Errorf("%w: dedup_window must be 1s-720h, not %s", state.ErrInvalid, time.Duration(d.DedupWindow))
	}
	return nil
}

// ValidateName checks a queue's namespace and name: the identifiers of keyspaces and tables.
func ValidateName(namespace, name string) error {
	if err := state.ValidateIdentifier("namespace", namespace); err != nil {
		return err
	}
	return state.ValidateIdentifier("queue", name)
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// ValidateID checks a job id (client-supplied or generated).
func ValidateID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: job id %q must be 1-%d of A-Z a-z 0-9 . _ : -", state.ErrInvalid, id, maxIDLen)
	}
	return nil
}

// shardOf is the shard of a job id: the first 32 bits of SHA-256 modulo shards, the same in every
// daemon.
func shardOf(id string, shards int) int {
	h := sha256.Sum256([]byte(id))
	return int(binary.BigEndian.Uint32(h[:4]) % uint32(shards))
}

// kind is where a row of a shard stands. A job is ready (a ready row with no token), claimed
// (its ready row, with the claim's token: a claim changes the row in place), or dead, at any
// time: every change between them is one conditional write of one partition.
type kind int

const (
	kindReady kind = 0
	// Kind 1 held claimed rows before claims changed ready rows in place; it is not written.
	kindDead  kind = 2
	kindDedup kind = 3
	// kindDone remembers a completed job (its token) for the dedup window, so that a complete
	// retried after a lost answer succeeds again instead of failing.
	kindDone kind = 4
	// kindIndex is a job's index row: one per live job (ready, claimed or dead), under the job's
	// id, whose payload is the slot of the job's row (encodeSlot). The store writes it in the
	// same atomic write as every insert and move of the job, so it is always exact: it is how a
	// job is found by id although ready rows are clustered by priority and due time.
	kindIndex kind = 5
	// kindLease is a claim's lease row, clustered by the lease's end (its slot's Due) then the
	// job's id, with the claim's token and, as payload, the slot of the job's row. The store
	// writes it with the claim and removes it with every change that ends or renews the claim,
	// in the same atomic write, so the reaper reads only the leases that ran out.
	kindLease kind = 6
)

// expires reports whether rows of k live only for the queue's dedup window.
func (k kind) expires() bool { return k == kindDedup || k == kindDone }

// isJob reports whether rows of k are jobs (and have an index row).
func (k kind) isJob() bool { return k == kindReady || k == kindDead }

// claimed reports whether j is claimed: a ready row with a claim's token.
func (j *Job) claimed() bool { return j.Token != "" }

// leaseRow is the lease row of claimed job j.
func leaseRow(j *Job) *Job {
	return &Job{slot: slot{Kind: kindLease, Due: j.LeaseUntil, ID: j.ID}, ID: j.ID, Payload: encodeSlot(j.slot),
		Token: j.Token, LeaseUntil: j.LeaseUntil}
}

// indexRow is the index row of the job at s.
func indexRow(s slot) *Job {
	return &Job{slot: slot{Kind: kindIndex, ID: s.ID}, ID: s.ID, Payload: encodeSlot(s)}
}

// encodeSlot is an index row's payload: kind (1 byte), priority (1 byte), due (8 bytes).
func encodeSlot(s slot) []byte {
	return binary.BigEndian.AppendUint64([]byte{byte(s.Kind), byte(s.Priority)}, uint64(s.Due))
}

// decodeSlot reads an index row's payload.
func decodeSlot(id string, b []byte) (slot, error) {
	if len(b) != 10 || !kind(b[0]).isJob() {
		return slot{}, fmt.Errorf("queue: corrupt index row of job %s", id)
	}
	return slot{Kind: kind(b[0]), Priority: int(b[1]), Due: int64(binary.BigEndian.Uint64(b[2:])), ID: id}, nil
}

// slot is a row's place in its shard's partition: ready rows sort by priority (highest first)
// then due time, so that the next job is at the front of a bounded read; claimed, dead and dedup
// rows sit after them under their id.
type slot struct {
	Kind     kind
	Priority int
	Due      int64
	ID       string
}

// Job is a job as stored and as the API shows it. Times are microseconds since the Unix epoch.
type Job struct {
	Shard int
	slot  slot
	ID    string
	// Priority is the job's priority (0 lowest).
	Priority int
	Payload  []byte
	// Attempts is how many times the job has been claimed.
	Attempts int
	Enqueued int64
	// Due is when the job becomes claimable (enqueue time plus delay, or release time plus
	// delay).
	Due int64
	// Holder, Token and LeaseUntil are set while the job is claimed.
	// The token names the claim and its lease's end (see newToken): extending a lease gives the
	// claim a new token.
	Holder     string
	Token      string
	LeaseUntil int64
	// Error is the last failure a worker reported (release with an error), or why the job was
	// dead-lettered.
	Error string
	// Died is when the job was dead-lettered.
	Died int64
}

// Duration is a time.Duration that reads and writes JSON as "30s".
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// UnmarshalJSON reads a Go duration string ("30s", "1m30s").
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return errors.New(`a duration is a string such as "30s"`)
	}
	v, err := time.ParseDuration(string(b[1 : len(b)-1]))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
