package applier

import (
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// This file is the applier's pure decision core: given one journal entry and what the target
// database holds for its row, it says which SQL-level actions to take. It does no I/O and reads no
// clock; the driver (applier.go) reads the target's state, calls decide, and executes the actions
// in the entry's target transaction.

// Resolve is how a table's conflicts are resolved: the conflicts field of its rule in the
// applier's tables policy.
type Resolve = policies.Resolution

// Conflict resolutions (see policies.Resolution).
const (
	ResolveLWW        = policies.ResolveLWW
	ResolvePriority   = policies.ResolvePriority
	ResolveDeadLetter = policies.ResolveDeadLetter
)

// RowClock is the last write of a row in the target: its HLC timestamp and origin site. The
// applier keeps it in the row_clock table, written in the same transaction as the row; a row's
// clock survives its deletion (a tombstone), so an older write cannot bring a deleted row back.
type RowClock struct {
	HLC    journal.Timestamp `json:"hlc"`
	Origin string            `json:"origin"`
}

// Less orders clocks: by HLC, then by origin (so that two distinct writes never tie).
func (c RowClock) Less(o RowClock) bool {
	if d := c.HLC.Compare(o.HLC); d != 0 {
		return d < 0
	}
	return c.Origin < o.Origin
}

// TargetState is what the target holds for the row an entry changes (the row at the entry's
// before key for updates and deletes, at its key for inserts), read under a lock in the entry's
// target transaction.
type TargetState struct {
	// Exists: the row is there.
	Exists bool
	// Matches: the row equals the entry's before image (update, delete) or after image (insert)
	// on every column of that image. Meaningless if !Exists.
	Matches bool
	// Clock is the row's last write known to the applier, nil if none (a row only ever written
	// locally, natively, and not stamped from the local stream).
	Clock *RowClock
}

// ActionKind is one SQL-level step.
type ActionKind uint8

// Actions.
const (
	ActInsert     ActionKind = iota + 1 // INSERT Row
	ActUpdate                           // UPDATE ... SET Row WHERE Key
	ActDelete                           // DELETE WHERE Key
	ActUpsert                           // INSERT Row ON DUPLICATE KEY UPDATE every column
	ActClock                            // row_clock of Key := Clock
	ActDeadLetter                       // the entry goes to the dead-letter table
)

func (k ActionKind) String() string {
	return [...]string{"?", "insert", "update", "delete", "upsert", "clock", "dead_letter"}[min(int(k), 6)]
}

// Action is one step of a decision.
type Action struct {
	Kind  ActionKind
	Key   journal.Row // where (update, delete, clock)
	Row   journal.Row // values (insert, update, upsert)
	Clock RowClock    // ActClock
}

// Resolution labels a conflict's outcome (the conflicts metric's resolution label).
type Resolution string

// Outcomes of a conflict.
const (
	IncomingWins Resolution = "incoming_wins"
	TargetKept   Resolution = "target_kept"
	DeadLettered Resolution = "dead_letter"
)

// Decision is what to do with one row entry.
type Decision struct {
	Actions    []Action
	Conflict   bool
	Resolution Resolution // set when Conflict
	// ClockMissing: the conflict was judged against a row with no clock (treated as older than
	// any remote write). The driver may stamp local clocks and decide again.
	ClockMissing bool
}

// Rule is a table's conflict policy as decide sees it.
type Rule struct {
	Resolve Resolve
	// Priority lists sites, highest priority first (ResolvePriority).
	Priority []string
	// LocalSite is the target's site: the origin of a row without a clock.
	LocalSite string
}

// beforeKey is the primary key of the row an update or delete changes: the key columns of the
// before image (an update may change the key; Entry.Key is taken from the after image).
func beforeKey(e *journal.Entry) journal.Row {
	if e.Before == nil {
		return e.Key
	}
	k := make(journal.Row, 0, len(e.Key))
	for _, kf := range e.Key {
		for _, f := range e.Before {
			if f.Name == kf.Name {
				k = append(k, f)
				break
			}
		}
	}
	if len(k) != len(e.Key) {
		return e.Key
	}
	return k
}

// targetKey is the key of the row whose state decide needs.
func targetKey(e *journal.Entry) journal.Row {
	if e.Op == journal.OpInsert {
		return e.Key
	}
	return beforeKey(e)
}

// compareImage is the image the target's row is compared with.
func compareImage(e *journal.Entry) journal.Row {
	if e.Op == journal.OpInsert {
		return e.After
	}
	return e.Before
}

func sameKey(a, b journal.Row) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || !a[i].Value.Equal(b[i].Value) {
			return false
		}
	}
	return true
}

// decide returns the actions for a row entry (insert, update or delete) given the target's state.
//
// A conflict is: an insert of a row that exists with other values; an update of a row that is
// missing or differs from the before image; a delete of a row that differs from the before image;
// or any change older than the row's clock (the target saw a later write). A delete of a missing
// row is no conflict (both sides agree the row is gone). With no conflict the entry is applied as
// it is; a row without a clock counts as older than any remote write. A conflict is resolved by
// rule; the winner's effect is made whole (an update that wins over a missing row recreates it).
func decide(e *journal.Entry, st TargetState, rule Rule) Decision {
	in := RowClock{HLC: e.HLC, Origin: e.Origin}
	key, oldKey := e.Key, beforeKey(e)
	var conflict bool
	switch e.Op {
	case journal.OpInsert:
		conflict = st.Exists && !st.Matches
	case journal.OpUpdate:
		conflict = !st.Exists || !st.Matches
	case journal.OpDelete:
		conflict = st.Exists && !st.Matches
	}
	if st.Clock != nil && in.Less(*st.Clock) {
		conflict = true
	}
	if !conflict {
		var acts []Action
		switch e.Op {
		case journal.OpInsert:
			if st.Exists { // the same row is already there: make sure, harmlessly
				acts = append(acts, Action{Kind: ActUpsert, Row: e.After})
			} else {
				acts = append(acts, Action{Kind: ActInsert, Row: e.After})
			}
		case journal.OpUpdate:
			acts = append(acts, Action{Kind: ActUpdate, Key: oldKey, Row: e.After})
			if !sameKey(oldKey, key) {
				acts = append(acts, Action{Kind: ActClock, Key: oldKey, Clock: in})
			}
		case journal.OpDelete:
			if st.Exists {
				acts = append(acts, Action{Kind: ActDelete, Key: oldKey})
			}
		}
		return Decision{Actions: append(acts, Action{Kind: ActClock, Key: key, Clock: in})}
	}

	d := Decision{Conflict: true, ClockMissing: st.Clock == nil}
	target := RowClock{Origin: rule.LocalSite}
	if st.Clock != nil {
		target = *st.Clock
	}
	incomingWins := false
	switch rule.Resolve {
	case ResolveDeadLetter:
		d.Resolution = DeadLettered
		d.Actions = []Action{{Kind: ActDeadLetter}}
		return d
	case ResolvePriority:
		ri, rt := rank(rule.Priority, in.Origin), rank(rule.Priority, target.Origin)
		if ri != rt {
			incomingWins = ri < rt
			break
		}
		incomingWins = target.Less(in)
	default:
		incomingWins = target.Less(in)
	}
	if !incomingWins {
		d.Resolution = TargetKept
		return d
	}
	d.Resolution = IncomingWins
	switch e.Op {
	case journal.OpInsert:
		d.Actions = append(d.Actions, Action{Kind: ActUpsert, Row: e.After})
	case journal.OpUpdate:
		if !sameKey(oldKey, key) {
			d.Actions = append(d.Actions, Action{Kind: ActDelete, Key: oldKey}, Action{Kind: ActClock, Key: oldKey, Clock: in})
		}
		d.Actions = append(d.Actions, Action{Kind: ActUpsert, Row: e.After})
	case journal.OpDelete:
		d.Actions = append(d.Actions, Action{Kind: ActDelete, Key: oldKey})
	}
	d.Actions = append(d.Actions, Action{Kind: ActClock, Key: key, Clock: in})
	return d
}

// rank is a site's place in the priority list (lower wins); unlisted sites rank last.
func rank(priority []string, site string) int {
	for i, s := range priority {
		if s == site {
			return i
		}
	}
	return len(priority)
}

// keyHash identifies a primary key in the row_clock table (journal.Row.KeyHash).
func keyHash(key journal.Row) []byte { return key.KeyHash() }
