package locks

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file holds the pure part of the ZooKeeper implementation: reference node names, their
// order, who holds and who blocks whom, and the data a reference node carries.

// A reference node is named "<t>-<guid>-<seq>": t is w or r, guid 16 hex digits chosen by the
// creator before the create (so that a create whose answer was lost can find its node: a
// "protected" name), seq the 10 digits ZooKeeper appends. The queue is ordered by seq.
const (
	guidLen   = 16
	seqLen    = 10
	refIDLen  = 2 + guidLen + 1 + seqLen
	typeWrite = 'w'
	typeRead  = 'r'
)

// Markers kept as the data of a lock's name node: how the last write holder ended. Acquire reads
// only their length, from the stat that comes with the children listing (no extra request).
const (
	markReleased   = "released"   // clean release by the holder (8 bytes)
	markUnreleased = "unreleased" // lease expiry, forced release, lost session (10 bytes)
)

func newGUID() string {
	b := make([]byte, guidLen/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func nodePrefix(t LockType, guid string) string {
	c := typeWrite
	if t == Read {
		c = typeRead
	}
	return string(rune(c)) + "-" + guid + "-"
}

type qnode struct {
	id  string
	typ LockType
	seq uint64
}

// parseRefID parses a reference ID (a node name); ok is false for anything this package did not
// create.
func parseRefID(id string) (qnode, bool) {
	if len(id) != refIDLen || id[1] != '-' || id[2+guidLen] != '-' {
		return qnode{}, false
	}
	var t LockType
	switch id[0] {
	case typeWrite:
		t = Write
	case typeRead:
		t = Read
	default:
		return qnode{}, false
	}
	for _, c := range id[2 : 2+guidLen] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return qnode{}, false
		}
	}
	seq, err := strconv.ParseUint(id[3+guidLen:], 10, 64)
	if err != nil || strings.ContainsAny(id[3+guidLen:], "+-") {
		return qnode{}, false
	}
	return qnode{id: id, typ: t, seq: seq}, true
}

// parseQueue orders a name's children by sequence number, ignoring foreign nodes.
func parseQueue(children []string) []qnode {
	q := make([]qnode, 0, len(children))
	for _, c := range children {
		if n, ok := parseRefID(c); ok {
			q = append(q, n)
		}
	}
	slices.SortFunc(q, func(a, b qnode) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return q
}

// blocker returns the reference that keeps id from holding: for a write, the one just ahead of
// it; for a read, the nearest write ahead. "" when id holds; found is false when id is not queued.
// Waiting on this one reference only is what avoids the herd effect.
func blocker(q []qnode, id string) (b string, found bool) {
	i := slices.IndexFunc(q, func(n qnode) bool { return n.id == id })
	if i < 0 {
		return "", false
	}
	if q[i].typ == Write {
		if i == 0 {
			return "", true
		}
		return q[i-1].id, true
	}
	for j := i - 1; j >= 0; j-- {
		if q[j].typ == Write {
			return q[j].id, true
		}
	}
	return "", true
}

// holdersOf returns the references that hold: the first write, or the reads before the first
// write.
func holdersOf(q []qnode) []qnode {
	if len(q) == 0 {
		return nil
	}
	if q[0].typ == Write {
		return q[:1]
	}
	i := slices.IndexFunc(q, func(n qnode) bool { return n.typ == Write })
	if i < 0 {
		return q
	}
	return q[:i]
}

// nodeData is the content of a reference node.
type nodeData struct {
	// Owner is the session key ("<session id hex>-<service id>-<generation>") of the service that created the
	// reference; the reference dies with it.
	Owner   string `json:"s"`
	LeaseMS int64  `json:"l,omitempty"`
	Label   string `json:"o,omitempty"`
}

func (d nodeData) lease() time.Duration { return time.Duration(d.LeaseMS) * time.Millisecond }

func encodeNode(d nodeData) []byte {
	b, _ := json.Marshal(d) // cannot fail: strings and an integer
	return b
}

func decodeNode(b []byte) (nodeData, error) {
	var d nodeData
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("reference node data %q: %w", b, err)
	}
	return d, nil
}

// expired reports whether a lease renewed at mtime (server milliseconds) has run out at now
// (server time).
func expired(d nodeData, mtimeMS int64, now time.Time) bool {
	return d.LeaseMS > 0 && now.UnixMilli() > mtimeMS+d.LeaseMS
}
