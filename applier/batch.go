package applier

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// This file applies runs of row entries with few statements. Applying entry by entry costs four
// statements a row (row state, clock, row, clock), which capped the applier at about 1,500 rows/s
// while MariaDB's own replica applied 85,000. A run is the consecutive row entries of one source
// transaction of a remote stream (split where a read of the journal ends, or where an entry needs
// the entry-by-entry path). For a run:
//   - the first touch of each row is prefetched, per table: one statement reads, locking them, how
//     many of the rows exist and their clocks (when none exists, as for inserts, that is all);
//     else a locking read of the rows' states follows (one parenthesized SELECT ... FOR UPDATE
//     per entry, in one UNION ALL, so that the server compares each row with its entry's image
//     under the column's collation, as the entry path does);
//   - each entry is decided (decide, as ever) against its prefetched state; its actions are
//     queued; consecutive inserts (or upserts, or deletes) of one table become one multi-row
//     statement, and the clocks one multi-row upsert at the end (the last clock of a row wins,
//     as it would written in order);
//   - an entry that touches a row an earlier entry of the run touched takes the entry path, after
//     the queue is flushed, so that it reads what the run wrote.
// A statement of the run that the target refuses (a constraint, a type) rolls the transaction
// back, and the transaction is applied again entry by entry, which names the entry and applies
// the error policy to it. A run of inserts only skips the read (applyFresh). Statement shapes
// above exactSizes rows are multiples of it (chunks, bucket) so that the per-connection cache of
// prepared statements stays small.

// maxRunRows bounds the entries of one run's prefetch and of one multi-row statement.
const maxRunRows = 128

// exactSizes is the largest statement written for its exact count of rows: up to it, a
// transaction's rows of one table and shape take one statement (and one round trip), at the
// price of up to exactSizes prepared statements per shape.
const exactSizes = 16

// maxStmtBytes bounds the values of one multi-row statement (estimated).
const maxStmtBytes = 1 << 20

// errRunRefused: the target refused a statement of a run; the transaction is applied again entry
// by entry.
var errRunRefused = errors.New("applier: a batched statement was refused; applying entry by entry")

// batchable reports whether e can go into a run: a remote row entry that the entry path would
// apply as a row (not refused before any SQL).
func (w *worker) batchable(e *journal.Entry) bool {
	if w.local || w.slowTx || len(e.Key) == 0 {
		return false
	}
	switch e.Op {
	case journal.OpInsert, journal.OpUpdate, journal.OpDelete:
	default:
		return false
	}
	if w.a.cfg.Tables.ModeOf(e.Database, e.Table) == policies.ModeOff {
		return false
	}
	return checkIdentifiers(e) == nil
}

// queued is an action of a run waiting to be executed.
type queued struct {
	e   *journal.Entry
	act Action
	cur map[string]any // the target's row, for a dead letter
}

// applyRun applies a run of entries (see batchable) inside tx.
func (w *worker) applyRun(tx *txState, run []*journal.Entry) error {
	for len(run) > maxRunRows {
		if err := w.applyRun(tx, run[:maxRunRows]); err != nil {
			return err
		}
		run = run[maxRunRows:]
	}
	if len(run) == 0 {
		return nil
	}
	if err := tx.begin(w); err != nil {
		return err
	}
	type rowID struct{ table, key string }
	touched := map[rowID]bool{}
	first := make([]bool, len(run))
	for i, e := range run {
		t := e.Database + "\x00" + e.Table
		tk, nk := rowID{t, string(keyHash(targetKey(e)))}, rowID{t, string(keyHash(e.Key))}
		first[i] = !touched[tk] && !touched[nk]
		touched[tk], touched[nk] = true, true
	}
	if w.prefetchTxs == 0 && freshInserts(run, first) {
		return w.applyFresh(w.conn, run)
	}
	states, err := w.prefetch(run, first)
	if err != nil {
		return err
	}
	var q []queued
	for i, e := range run {
		if !first[i] {
			if err := w.flush(q); err != nil {
				return err
			}
			q = q[:0]
			if err := w.row(tx, e); err != nil {
				if transient(err) || errors.Is(err, ErrStopped) || errors.Is(err, errNeedLocal) {
					return err
				}
				return errRunRefused
			}
			continue
		}
		st := states[i]
		d := decide(e, st.TargetState, w.a.cfg.ruleFor(e.Database, e.Table))
		if w.needLocal(e, d) {
			return errNeedLocal
		}
		for _, act := range d.Actions {
			q = append(q, queued{e: e, act: act, cur: st.cur})
		}
		if d.Conflict {
			tx.conflict(e, d, TargetRowState{Exists: st.Exists, Row: st.cur, Clock: st.Clock})
		}
	}
	return w.flush(q)
}

// errFreshTaken: an insert of a run applied as fresh found its row or its clock already there;
// the transaction is applied again with the rows' states read first.
var errFreshTaken = errors.New("applier: a row or clock of a fresh insert exists; reading the rows first")

// freshInserts reports whether a run is inserts only (snapshot rows included), each the first
// touch of its row in the run.
func freshInserts(run []*journal.Entry, first []bool) bool {
	for i, e := range run {
		if e.Op != journal.OpInsert || !first[i] {
			return false
		}
	}
	return true
}

// applyFresh applies a run of inserts (freshInserts) optimistically, as if neither their rows nor
// their clocks existed in the target, which is what decide does then: plain INSERTs of the rows and
// of their clocks, without reading first (the statement that reads the rows' states costs as
// much as the one that writes them). An INSERT whose row or clock exists fails on the key, the
// decision taken would not hold, and the transaction is applied again the usual way
// (errFreshTaken). The INSERTs lock what they write, as the usual path's locking read would.
func (w *worker) applyFresh(c *target, run []*journal.Entry) error {
	var q []queued
	for _, e := range run {
		d := decide(e, TargetState{}, w.a.cfg.ruleFor(e.Database, e.Table))
		for _, act := range d.Actions {
			q = append(q, queued{e: e, act: act})
		}
	}
	err := w.flushFresh(c, q, true)
	var me *mysql.MyError
	if errors.As(err, &me) && me.Code == mysql.ER_DUP_ENTRY {
		return fmt.Errorf("%w: %v", errFreshTaken, err)
	}
	return err
}

// prefetched is the state of an entry's row read by prefetch.
type prefetched struct {
	TargetState
	cur map[string]any
}

// prefetch reads, locking them, the state and clock of the rows of the entries marked first.
func (w *worker) prefetch(run []*journal.Entry, first []bool) ([]prefetched, error) {
	out := make([]prefetched, len(run))
	// Entries grouped by table and by the columns of their image (one statement shape each).
	groups := map[string][]int{}
	var order []string
	for i, e := range run {
		if !first[i] {
			continue
		}
		g := e.Database + "\x00" + e.Table + "\x00" + rowShape(compareImage(e)) + "\x00" + rowShape(targetKey(e))
		if groups[g] == nil {
			order = append(order, g)
		}
		groups[g] = append(groups[g], i)
	}
	for _, g := range order {
		idx := groups[g]
		existing, err := w.prefetchKeysAndClocks(run, idx, out)
		if err != nil {
			return nil, err
		}
		if existing > 0 { // mostly new rows (inserts): then the comparisons are not needed
			if err := w.prefetchStates(run, idx, out); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// rowShape is the column names of a row, in order.
func rowShape(r journal.Row) string {
	var b strings.Builder
	for _, f := range r {
		b.WriteString(f.Name)
		b.WriteByte(0)
	}
	return b.String()
}

// bucket rounds n up to a power of two up to exactSizes, to a multiple of it above (statement
// shapes stay few); pads repeat the last item.
func bucket(n int) int {
	switch {
	case n <= 1:
		return 1
	case n > exactSizes:
		return (n + exactSizes - 1) / exactSizes * exactSizes
	}
	return 1 << bits.Len(uint(n-1))
}

// prefetchStates reads the rows of the entries idx (one table, one image shape) under a lock:
// whether each exists, whether it matches its entry's image, and its values.
func (w *worker) prefetchStates(run []*journal.Entry, idx []int, out []prefetched) error {
	e0 := run[idx[0]]
	img0, key0 := compareImage(e0), targetKey(e0)
	n := bucket(len(idx))
	var part strings.Builder
	part.WriteString("(SELECT ? AS i, 1")
	for _, f := range img0 {
		part.WriteString(" AND (" + quote(f.Name) + " <=> ?)")
	}
	for _, f := range img0 {
		part.WriteString(", " + quote(f.Name))
	}
	where, _ := whereKey(key0)
	part.WriteString(" FROM " + quote(e0.Database) + "." + quote(e0.Table) + " WHERE " + where + " FOR UPDATE)")
	parts := make([]string, n)
	args := make([]any, 0, n*(1+len(img0)+len(key0)))
	for p := range n {
		parts[p] = part.String()
		i := idx[min(p, len(idx)-1)]
		e := run[i]
		args = append(args, int64(i))
		for _, f := range compareImage(e) {
			args = append(args, f.Value.SQLArg())
		}
		_, kargs := whereKey(targetKey(e))
		args = append(args, kargs...)
	}
	r, err := w.conn.exec(strings.Join(parts, " UNION ALL "), args...)
	if err != nil {
		return err
	}
	defer r.Close()
	for row := range r.RowNumber() {
		i, err := r.GetInt(row, 0)
		if err != nil {
			return err
		}
		if i < 0 || int(i) >= len(out) || out[i].Exists {
			continue // a pad's copy
		}
		m, err := r.GetInt(row, 1)
		if err != nil {
			return err
		}
		cur := make(map[string]any, len(img0))
		for c, f := range img0 {
			v, _ := r.GetValue(row, c+2)
			cur[f.Name] = display(v)
		}
		out[i].Exists, out[i].Matches, out[i].cur = true, m == 1, cur
	}
	return nil
}

// prefetchKeysAndClocks reads, under locks, in one round trip: how many of the rows of the
// entries idx (one table, one key shape) exist, and their clocks.
func (w *worker) prefetchKeysAndClocks(run []*journal.Entry, idx []int, out []prefetched) (int64, error) {
	e0 := run[idx[0]]
	key0 := targetKey(e0)
	n := bucket(len(idx))
	var keyCols []string
	for _, f := range key0 {
		keyCols = append(keyCols, quote(f.Name))
	}
	tuple := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(key0)), ", ") + ")"
	args := make([]any, 0, n*(len(key0)+1)+2)
	for p := range n {
		for _, f := range targetKey(run[idx[min(p, len(idx)-1)]]) {
			args = append(args, f.Value.SQLArg())
		}
	}
	args = append(args, e0.Database, e0.Table)
	byHash := map[string][]int{}
	for p := range n {
		i := idx[min(p, len(idx)-1)]
		h := keyHash(targetKey(run[i]))
		args = append(args, h)
		if p < len(idx) {
			byHash[string(h)] = append(byHash[string(h)], i)
		}
	}
	q := "(SELECT COUNT(*) AS n, NULL AS pk_hash, NULL AS hlc_wall, NULL AS hlc_logical, NULL AS origin FROM " +
		quote(e0.Database) + "." + quote(e0.Table) + " WHERE (" + strings.Join(keyCols, ", ") + ") IN (" +
		strings.TrimSuffix(strings.Repeat(tuple+", ", n), ", ") + ") FOR UPDATE) UNION ALL " +
		"(SELECT NULL, pk_hash, hlc_wall, hlc_logical, origin FROM " + w.conn.meta + ".row_clock WHERE db = ? AND tbl = ? AND pk_hash IN (?" +
		strings.Repeat(", ?", n-1) + ") FOR UPDATE)"
	r, err := w.conn.exec(q, args...)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	var existing int64
	for row := range r.RowNumber() {
		if v, _ := r.GetValue(row, 0); v != nil { // the count
			if existing, err = r.GetInt(row, 0); err != nil {
				return 0, err
			}
			continue
		}
		h, err := r.GetString(row, 1)
		if err != nil {
			return 0, err
		}
		wall, err := r.GetInt(row, 2)
		if err != nil {
			return 0, err
		}
		logical, err := r.GetUint(row, 3)
		if err != nil {
			return 0, err
		}
		origin, err := r.GetString(row, 4)
		if err != nil {
			return 0, err
		}
		// GetString aliases the result's buffer (see target.clock): copy.
		clk := RowClock{HLC: journal.Timestamp{Wall: wall, Logical: uint32(logical)}, Origin: strings.Clone(origin)}
		for _, i := range byHash[h] {
			c := clk
			out[i].Clock = &c
		}
	}
	return existing, nil
}

// flush executes queued actions in order, merging consecutive inserts, upserts or deletes of one
// table into multi-row statements, and writes the clocks last (the last of each row).
func (w *worker) flush(q []queued) error { return w.flushFresh(w.conn, q, false) }

// flushFresh is flush on connection c; fresh: the clocks are new rows (plain INSERTs, failing on
// a clock that exists).
func (w *worker) flushFresh(c *target, q []queued, fresh bool) error {
	type clockKey struct{ db, tbl, hash string }
	clocks := map[clockKey]int{} // -> index in clockRows
	var clockRows []clockRow
	noteClock := func(c queued) { // the last clock of a row wins
		h := keyHash(c.act.Key)
		k := clockKey{c.e.Database, c.e.Table, string(h)}
		if j, ok := clocks[k]; ok {
			clockRows[j] = clockRow{c, h}
		} else {
			clocks[k] = len(clockRows)
			clockRows = append(clockRows, clockRow{c, h})
		}
	}
	for i := 0; i < len(q); {
		a := q[i]
		switch a.act.Kind {
		case ActClock:
			noteClock(a)
			i++
		case ActInsert, ActUpsert, ActDelete:
			// The group: a's kind, table and columns, skipping (and recording) clocks between.
			group := []queued{a}
			shape := actionShape(a)
			j := i + 1
			for ; j < len(q); j++ {
				b := q[j]
				if b.act.Kind == ActClock {
					noteClock(b)
					continue
				}
				if actionShape(b) != shape {
					break
				}
				group = append(group, b)
			}
			if err := w.execGroup(c, group); err != nil {
				return err
			}
			i = j
		case ActDeadLetter:
			if err := c.deadLetter(a.e, "conflict", "conflict: target row kept", a.cur); err != nil {
				return err
			}
			i++
		default: // ActUpdate: one statement
			if err := c.do(a.e, a.act); err != nil {
				return err
			}
			i++
		}
	}
	return w.execClocks(c, clockRows, fresh)
}

// actionShape is what two actions must share to be one statement.
func actionShape(a queued) string {
	cols := a.act.Row
	if a.act.Kind == ActDelete {
		cols = a.act.Key
	}
	return fmt.Sprintf("%d\x00%s\x00%s\x00%s", a.act.Kind, a.e.Database, a.e.Table, rowShape(cols))
}

// chunks splits n items, each of the given estimated size, into statements of at most maxRunRows
// items and, where possible, maxStmtBytes: of their exact count up to exactSizes items (one
// statement for a small transaction), of a multiple of exactSizes above, so that a run takes at
// most two statements (100 rows: 96 and 4) and a table shape at most exactSizes+maxRunRows/
// exactSizes prepared statements.
func chunks(sizes []int) []int {
	var out []int
	for rest := sizes; len(rest) > 0; {
		n, total := 0, 0
		for n < min(len(rest), maxRunRows) && (n == 0 || total+rest[n] <= maxStmtBytes) {
			total += rest[n]
			n++
		}
		if n > exactSizes {
			n -= n % exactSizes // down to a multiple of exactSizes
		}
		out = append(out, n)
		rest = rest[n:]
	}
	return out
}

func rowBytes(r journal.Row) int {
	n := 0
	for _, f := range r {
		n += 16 + len(f.Value.Str) + len(f.Value.Bytes)
	}
	return n
}

// execGroup runs a group of inserts, upserts or deletes of one table and one shape.
func (w *worker) execGroup(c *target, group []queued) error {
	sizes := make([]int, len(group))
	for i, g := range group {
		sizes[i] = rowBytes(g.act.Row) + rowBytes(g.act.Key)
	}
	for _, n := range chunks(sizes) {
		part := group[:n]
		group = group[n:]
		a := part[0]
		tbl := quote(a.e.Database) + "." + quote(a.e.Table)
		var q string
		var args []any
		if a.act.Kind == ActDelete {
			var keyCols []string
			for _, f := range a.act.Key {
				keyCols = append(keyCols, quote(f.Name))
			}
			tuple := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(keyCols)), ", ") + ")"
			q = "DELETE FROM " + tbl + " WHERE (" + strings.Join(keyCols, ", ") + ") IN (" + strings.TrimSuffix(strings.Repeat(tuple+", ", n), ", ") + ")"
			for _, g := range part {
				for _, f := range g.act.Key {
					args = append(args, f.Value.SQLArg())
				}
			}
		} else {
			cols, marks, _ := columns(a.act.Row)
			tuple := "(" + strings.Join(marks, ", ") + ")"
			q = "INSERT INTO " + tbl + " (" + strings.Join(cols, ", ") + ") VALUES " + strings.TrimSuffix(strings.Repeat(tuple+", ", n), ", ")
			if a.act.Kind == ActUpsert {
				var set []string
				for _, c := range cols {
					set = append(set, c+" = VALUES("+c+")")
				}
				q += " ON DUPLICATE KEY UPDATE " + strings.Join(set, ", ")
			}
			for _, g := range part {
				for _, f := range g.act.Row {
					args = append(args, f.Value.SQLArg())
				}
			}
		}
		if _, err := c.exec(q, args...); err != nil {
			return err
		}
	}
	return nil
}

// clockRow is a clock action of a flush with its key's hash.
type clockRow struct {
	queued
	hash []byte
}

// execClocks upserts the clocks of a flush, several rows a statement.
func (w *worker) execClocks(c *target, rows []clockRow, fresh bool) error {
	for len(rows) > 0 {
		n := min(len(rows), maxRunRows)
		part := rows[:n]
		rows = rows[n:]
		// Above exactSizes the statement's size is rounded up to a multiple of it, padded with
		// copies of the last clock (the same upsert again changes nothing): one statement per
		// run, few statement shapes.
		m := n
		if m > exactSizes && !fresh { // a copy would fail a plain INSERT
			m = (m + exactSizes - 1) / exactSizes * exactSizes
		}
		args := make([]any, 0, 6*m)
		for p := range m {
			c := part[min(p, n-1)]
			args = append(args, c.e.Database, c.e.Table, c.hash, c.act.Clock.HLC.Wall, uint64(c.act.Clock.HLC.Logical), c.act.Clock.Origin)
		}
		q := "INSERT INTO " + c.meta + ".row_clock (db, tbl, pk_hash, hlc_wall, hlc_logical, origin) VALUES " +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?), ", m), ", ")
		if !fresh {
			q += " ON DUPLICATE KEY UPDATE hlc_wall = VALUES(hlc_wall), hlc_logical = VALUES(hlc_logical), origin = VALUES(origin)"
		}
		if _, err := c.exec(q, args...); err != nil {
			return err
		}
	}
	return nil
}
