package binlog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/musicd/musicd/journal"
)

// Initial snapshots (docs/decisions/0009-binlog-snapshot.md).
//
// A table whose rows were never journaled is read in chunks in primary-key order. Each chunk is
// read in a transaction of its own, START TRANSACTION WITH CONSISTENT SNAPSHOT, together with
// the binlog position that snapshot corresponds to (MariaDB's Binlog_snapshot_file/position). The
// capture loop pauses while the chunk is read, then journals the chunk exactly when it has handled
// the binlog up to that position: the rows are the table's state at that point of the stream,
// every change before it is journaled before them and every change after it after them. No row
// is dropped, none is read twice, and no long transaction is held. A chunk read at a position the
// capture has already passed (a transaction written to the binlog but not yet committed in
// InnoDB when the chunk was read) is discarded and read again.
//
// Progress is journaled: each chunk is followed, in the same append, by a snapshot state mark
// (tables done, table in progress and its last key), whose seq a consumer position records, so a
// restart finds it with a bounded read and resumes after the last chunk.

// SnapshotConsumer is the consumer name under which a capture stream records the seq before its
// latest snapshot state mark. It holds trimming back only to that mark, which is written again
// at least every stateEvery entries.
const SnapshotConsumer = "binlog-snapshot-state"

// stateStatement is the Statement of a snapshot state mark.
const stateStatement = "snapshot"

// stateEvery bounds the entries between two state marks: what a restart reads to find the last.
const stateEvery = 10000

// binPos is a binlog coordinate.
type binPos struct {
	file string
	off  uint64
}

func (p binPos) String() string { return p.file + ":" + strconv.FormatUint(p.off, 10) }

// cmp orders binlog coordinates: files by their numeric suffix (a longer name is a later file),
// then offsets.
func (p binPos) cmp(o binPos) int {
	if p.file != o.file {
		if len(p.file) != len(o.file) {
			if len(p.file) < len(o.file) {
				return -1
			}
			return 1
		}
		return strings.Compare(p.file, o.file)
	}
	switch {
	case p.off < o.off:
		return -1
	case p.off > o.off:
		return 1
	}
	return 0
}

// SnapshotProgress is what the status view shows of a capture's snapshots.
type SnapshotProgress struct {
	Pending []string `json:"pending,omitempty"` // tables still to snapshot, the one in progress first
	Table   string   `json:"table,omitempty"`   // the table in progress
	Rows    uint64   `json:"rows"`              // rows of Table journaled by this run of the capture
	// Estimate is the server's estimate of Table's rows (information_schema, approximate).
	Estimate uint64 `json:"estimate,omitempty"`
	Done     int    `json:"tables_done"`
	// Chunks counts the chunks this capture has journaled since the process started.
	Chunks uint64 `json:"chunks"`
}

type tableRef struct{ db, table string }

func (t tableRef) String() string { return t.db + "." + t.table }

// chunk is a chunk read, waiting to be journaled at its position.
type chunk struct {
	table tableRef
	at    binPos
	rows  []journal.Entry
	last  journal.Row // key of the last row (nil: no row)
	done  bool        // the table has no rows after these
	bytes int
}

// snapshotter holds the snapshot state of a capture; the capture loop alone uses it.
type snapshotter struct {
	w        *txWriter
	conn     *client.Conn // nil until the first chunk
	done     map[string]bool
	pending  []tableRef // pending[0] is in progress
	after    journal.Row
	rows     uint64 // rows of pending[0] journaled
	held     *chunk
	retryAt  time.Time
	retries  int
	logAt    time.Time
	estimate uint64 // of pending[0]'s rows
	skipped  uint64 // rows of pending[0] left out: written here by the applier (leaveOutApplied)
}

// loadSnapshot reads the stream's snapshot state and the source's tables, and decides what is
// left to snapshot. A new stream snapshots every selected table (mode initial); a stream written
// before snapshots existed counts its selected tables as done. It queues a state mark when the
// state changed.
func (w *txWriter) loadSnapshot(ctx context.Context, conn *client.Conn, head journal.Head) error {
	c := w.c
	s := &snapshotter{w: w, done: map[string]bool{}}
	var cur tableRef
	found := false
	if head.Seq > 0 {
		seq, ok, err := c.store.Position(ctx, SnapshotConsumer, c.Stream())
		if err != nil {
			return err
		}
		if ok {
			// The mark is at seq+1, or a later one is after it (appended before a crash let the
			// position move).
			r := journal.NewReader(c.store, c.Stream(), max(seq+1, head.Low+1), 1000)
			for {
				e, more, err := r.Next(ctx)
				if err != nil {
					return err
				}
				if !more {
					break
				}
				if e.Op != journal.OpMark || e.Statement != stateStatement {
					continue
				}
				found = true
				w.sinceState = int(min(head.Seq-e.Seq, stateEvery)) // the next mark is due after that many fewer
				clear(s.done)
				for _, col := range e.Columns {
					s.done[col.Name] = true
				}
				cur, s.after = tableRef{e.Database, e.Table}, e.Key
			}
			if !found {
				return fmt.Errorf("stream %s: no snapshot state mark after seq %d", c.Stream(), seq)
			}
		}
	}
	tables, err := selectedTables(conn, c.cfg.Source)
	if err != nil {
		return err
	}
	initial := c.cfg.Source.Snapshot == SnapshotInitial
	changed := !found
	selected := map[string]bool{}
	for _, t := range tables {
		selected[t.String()] = true
	}
	for name := range s.done {
		if !selected[name] {
			delete(s.done, name) // deselected (or dropped): its changes are no longer journaled
			changed = true
		}
	}
	legacy := head.Seq > 1 && !found
	for _, t := range tables {
		name := t.String()
		switch {
		case s.done[name]:
		case !initial || legacy:
			s.done[name] = true
		case t == cur:
			s.pending = append([]tableRef{t}, s.pending...)
		default:
			s.pending = append(s.pending, t)
		}
	}
	if len(s.pending) == 0 || s.pending[0] != cur {
		if cur.table != "" {
			changed = true
		}
		s.after = nil
	}
	if legacy {
		c.logger.Info("snapshot: stream written before snapshots were recorded; its selected tables count as snapshotted", "tables", len(s.done))
	}
	w.snap = s
	s.publish()
	if len(s.pending) > 0 {
		c.logger.Info("snapshot: tables to snapshot", "tables", len(s.pending), "first", s.pending[0].String(), "resume_after", keyText(s.after))
	}
	if changed {
		if w.cutTx {
			// Resuming inside a transaction: the mark goes after it, at the next commit.
			w.sinceState = stateEvery
			return nil
		}
		return s.queueState(ctx)
	}
	return nil
}

// selectedTables lists the source's base tables that the selection captures, in order.
func selectedTables(conn *client.Conn, src SourceConfig) ([]tableRef, error) {
	r, err := conn.Execute("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' " +
		"AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY TABLE_SCHEMA, TABLE_NAME")
	if err != nil {
		return nil, fmt.Errorf("source %s: listing tables: %w", src.Name, err)
	}
	var out []tableRef
	for i := range r.RowNumber() {
		db, _ := r.GetString(i, 0)
		t, _ := r.GetString(i, 1)
		if src.Tables.Selected(db, t) {
			out = append(out, tableRef{db, t})
		}
	}
	return out, nil
}

// stateMark is the snapshot state as a mark entry.
func (s *snapshotter) stateMark() journal.Entry {
	names := make([]string, 0, len(s.done))
	for n := range s.done {
		names = append(names, n)
	}
	sort.Strings(names)
	e := journal.Entry{Op: journal.OpMark, Statement: stateStatement, Origin: s.w.c.cfg.Site,
		Tx: journal.Tx{ID: journal.SnapshotStateTx, Count: 1, Last: true}}
	e.Source.Position = s.w.position
	for _, n := range names {
		e.Columns = append(e.Columns, journal.Column{Name: n, Type: "done"})
	}
	if len(s.pending) > 0 {
		e.Database, e.Table, e.Key = s.pending[0].db, s.pending[0].table, s.after
	}
	return e
}

func (s *snapshotter) queueState(ctx context.Context) error {
	e := s.stateMark()
	return s.w.queue(ctx, []journal.Entry{e}, journal.EncodedSize(&e))
}

// publish updates what Progress returns and the pending metric.
func (s *snapshotter) publish() {
	p := SnapshotProgress{Done: len(s.done), Rows: s.rows, Chunks: s.w.c.snapChunks.Load()}
	for _, t := range s.pending {
		p.Pending = append(p.Pending, t.String())
	}
	if len(s.pending) > 0 {
		p.Table, p.Estimate = s.pending[0].String(), s.estimate
	}
	s.w.c.snapProgress.Store(&p)
	if m := s.w.c.cfg.Metrics; m != nil {
		m.snapPending.WithLabelValues(s.w.c.cfg.Source.Name).Set(float64(len(s.pending)))
	}
}

// wake is when the capture loop should next call step without a binlog event: nil when it waits
// for events (or has nothing to do).
func (s *snapshotter) wake() <-chan time.Time {
	if s == nil || s.held != nil || len(s.pending) == 0 || !s.w.stateKnown || s.w.gtid != "" || s.w.cutTx {
		return nil
	}
	return time.After(max(time.Until(s.retryAt), 0))
}

// step is called by the capture loop between transactions: it journals the held chunk once the
// loop has reached its position, or reads the next one.
func (s *snapshotter) step(ctx context.Context) error {
	w := s.w
	if !w.stateKnown || w.cutTx {
		return nil // the stream's first events say where the binlog is; a cut transaction first
	}
	if s.held == nil {
		if len(s.pending) == 0 || time.Now().Before(s.retryAt) {
			return nil
		}
		ch, err := s.read(ctx)
		if err != nil {
			return err
		}
		if ch == nil {
			return nil
		}
		s.held = ch
	}
	ch := s.held
	switch {
	case ch.at.cmp(w.stateAt) < 0:
		// Read at a position the capture has passed: its rows may be older than what is
		// journaled. Read it again (soon: that transaction is committing).
		s.held = nil
		s.retries++
		s.retryAt = time.Now().Add(min(time.Duration(s.retries)*10*time.Millisecond, time.Second))
		if s.retries%100 == 0 {
			w.c.logger.Warn("snapshot: chunks keep being read behind the capture", "table", ch.table.String(), "chunk_at", ch.at.String(), "capture_at", w.stateAt.String())
		}
		return nil
	case ch.at.cmp(w.pos) > 0:
		return nil // the capture has not reached the chunk's position yet
	}
	s.held, s.retries = nil, 0
	return s.journal(ctx, ch)
}

// journal queues a chunk and the state after it, as one group.
func (s *snapshotter) journal(ctx context.Context, ch *chunk) error {
	w := s.w
	es := ch.rows
	txID := "snapshot " + ch.table.String() + " " + ch.at.String()
	for i := range es {
		es[i].Tx = journal.Tx{ID: txID, Index: uint32(i), Count: uint32(len(es)), Last: i == len(es)-1}
		es[i].Source.File, es[i].Source.Pos = ch.at.file, ch.at.off
	}
	if len(es) > 0 {
		es[len(es)-1].Source.Position = w.position
	}
	s.rows += uint64(len(es))
	w.c.snapChunks.Add(1)
	if ch.done {
		s.done[ch.table.String()] = true
		s.pending, s.after = s.pending[1:], nil
		w.c.logger.Info("snapshot: table done", "table", ch.table.String(), "rows", s.rows, "applied_from_other_sites_left_out", s.skipped)
		s.rows, s.skipped = 0, 0
	} else {
		s.after = ch.last
	}
	mark := s.stateMark()
	es = append(es, mark)
	if err := w.queue(ctx, es, ch.bytes+journal.EncodedSize(&mark)); err != nil {
		return err
	}
	s.publish()
	if now := time.Now(); now.After(s.logAt) && len(s.pending) > 0 {
		s.logAt = now.Add(10 * time.Second)
		p := w.c.SnapshotProgress()
		w.c.logger.Info("snapshot progress", "table", p.Table, "rows", p.Rows, "estimate", p.Estimate, "tables_pending", len(p.Pending), "tables_done", p.Done)
	}
	return nil
}

// ddl keeps the snapshot state right across a table DDL of a selected table: a created table's
// rows all come through the binlog; a dropped one is forgotten; any other change to the table in
// progress starts it over (its key or columns may have changed).
func (s *snapshotter) ddl(db, table, stmt string) {
	if s == nil || table == "" {
		return
	}
	t := tableRef{db, table}
	verb := ""
	if f := strings.Fields(stripComments(stmt)); len(f) > 0 {
		verb = strings.ToUpper(f[0])
	}
	if s.held != nil && s.held.table == t {
		s.held = nil
	}
	idx := -1
	for i, p := range s.pending {
		if p == t {
			idx = i
		}
	}
	switch verb {
	case "CREATE":
		if idx < 0 {
			s.done[t.String()] = true
		}
		// A table in pending was listed before its CREATE was read: its snapshot is harmless.
	case "DROP":
		delete(s.done, t.String())
		if idx >= 0 {
			s.pending = append(s.pending[:idx:idx], s.pending[idx+1:]...)
			if idx == 0 {
				s.after, s.rows = nil, 0
			}
		}
	default:
		if idx == 0 {
			s.after, s.rows = nil, 0
		}
	}
	s.publish()
}

func stripComments(stmt string) string {
	for {
		stmt = strings.TrimLeft(stmt, " \t\r\n")
		if !strings.HasPrefix(stmt, "/*") {
			return stmt
		}
		end := strings.Index(stmt, "*/")
		if end < 0 {
			return stmt
		}
		stmt = stmt[end+2:]
	}
}

// read reads the next chunk of the table in progress, with the binlog position it is consistent
// with. It returns nil when the table is gone (it is dropped from pending).
func (s *snapshotter) read(ctx context.Context) (*chunk, error) {
	w := s.w
	src := w.c.cfg.Source
	t := s.pending[0]
	if s.conn == nil {
		conn, err := Connect(ctx, src)
		if err != nil {
			return nil, err
		}
		for _, q := range []string{"SET NAMES utf8mb4", "SET time_zone = '+00:00'", "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"} {
			if _, err := conn.Execute(q); err != nil {
				conn.Close()
				return nil, fmt.Errorf("source %s: snapshot connection: %s: %w", src.Name, q, err)
			}
		}
		s.conn = conn
	}
	cols, pk, err := tableColumns(s.conn, t)
	if err != nil {
		return nil, s.fail(err)
	}
	if len(cols) == 0 {
		w.c.logger.Warn("snapshot: table is gone", "table", t.String())
		s.pending, s.after, s.rows = s.pending[1:], nil, 0
		s.publish()
		return nil, nil
	}
	if len(pk) == 0 {
		w.c.logger.Warn("snapshot: table has no primary key; not snapshotted (its rows could not be matched)", "table", t.String())
		s.pending, s.after, s.rows = s.pending[1:], nil, 0
		s.publish()
		return nil, nil
	}
	if s.after != nil && !sameNames(s.after, pk) {
		s.after, s.rows = nil, 0 // the key changed: start over
	}
	if s.rows == 0 && s.after == nil {
		if est, err := estimateRows(s.conn, t); err == nil {
			s.estimate = est
			s.publish()
		}
	}
	q, args := chunkQuery(t, cols, pk, s.after, src.SnapshotChunkRows)
	stmt, err := s.conn.Prepare(q)
	if err != nil {
		return nil, s.fail(fmt.Errorf("source %s: snapshot of %s: %w", src.Name, t, err))
	}
	defer stmt.Close()
	if _, err := s.conn.Execute("START TRANSACTION WITH CONSISTENT SNAPSHOT"); err != nil {
		return nil, s.fail(err)
	}
	defer func() { _, _ = s.conn.Execute("ROLLBACK") }()
	r, err := s.conn.Execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
	if err != nil {
		return nil, s.fail(err)
	}
	var at binPos
	for i := range r.RowNumber() {
		name, _ := r.GetString(i, 0)
		val, _ := r.GetString(i, 1)
		switch strings.ToLower(name) {
		case "binlog_snapshot_file":
			at.file = val
		case "binlog_snapshot_position":
			at.off, _ = strconv.ParseUint(val, 10, 64)
		}
	}
	if at.file == "" {
		return nil, fmt.Errorf("%w: source %s: the server reports no Binlog_snapshot_file (MariaDB with the binary log is needed for snapshots)", ErrNotCapturable, src.Name)
	}
	ch := &chunk{table: t, at: at}
	full := false
	pkIdx := make([]int, len(pk))
	for i, k := range pk {
		for j, c := range cols {
			if c == k {
				pkIdx[i] = j
			}
		}
	}
	var res mysql.Result
	var convErr error
	n := 0
	err = stmt.ExecuteSelectStreaming(&res, func(row []mysql.FieldValue) error {
		n++
		if full || convErr != nil {
			return nil // drained: the connection must read the whole result
		}
		all := make(journal.Row, len(row), len(row)+len(pk))
		vals := all[:len(row):len(row)]
		for i, v := range row {
			val, err := snapValue(res.Fields[i], v)
			if err != nil {
				convErr = fmt.Errorf("source %s: snapshot of %s column %s: %w", src.Name, t, cols[i], err)
				return nil
			}
			vals[i] = journal.Field{Name: cols[i], Value: val}
		}
		key := all[len(row):len(row)]
		for _, i := range pkIdx {
			key = append(key, vals[i])
		}
		e := journal.Entry{Op: journal.OpRead, Origin: w.c.cfg.Site, Database: t.db, Table: t.table, Key: key, After: vals}
		size := journal.EncodedSize(&e)
		ch.rows = append(ch.rows, e)
		ch.bytes += size
		ch.last = key
		if ch.bytes >= groupBytes {
			full = true // bounded by bytes: the rest is the next chunk's
		}
		return nil
	}, nil, args...)
	if err != nil {
		return nil, s.fail(fmt.Errorf("source %s: snapshot of %s: %w", src.Name, t, err))
	}
	if convErr != nil {
		return nil, convErr
	}
	if err := s.leaveOutApplied(ch); err != nil {
		return nil, s.fail(fmt.Errorf("source %s: snapshot of %s: %w", src.Name, t, err))
	}
	ch.done = !full && n < src.SnapshotChunkRows
	return ch, nil
}

// clockBatch bounds the keys of one read of the applier's row clocks.
const clockBatch = 500

// leaveOutApplied drops from a chunk the rows whose last writer, by the row clocks of the
// applier writing into this database (CaptureConfig.AppliedClocks), is another site. It reads
// the clocks in the chunk's own consistent snapshot, where the applier wrote each row and its
// clock in one transaction: a row the chunk holds has its clock there too.
func (s *snapshotter) leaveOutApplied(ch *chunk) error {
	meta := s.w.c.cfg.AppliedClocks
	if meta == "" || len(ch.rows) == 0 {
		return nil
	}
	hashes := make([][]byte, len(ch.rows))
	for i, e := range ch.rows {
		hashes[i] = e.Key.KeyHash()
	}
	foreign := map[string]bool{}
	for start := 0; start < len(ch.rows); start += clockBatch {
		part := hashes[start:min(start+clockBatch, len(hashes))]
		args := []any{ch.table.db, ch.table.table}
		for _, h := range part {
			args = append(args, h)
		}
		r, err := s.conn.Execute("SELECT pk_hash, origin FROM "+quoteID(meta)+".row_clock WHERE db = ? AND tbl = ? AND pk_hash IN (?"+
			strings.Repeat(", ?", len(part)-1)+")", args...)
		var me *mysql.MyError
		if errors.As(err, &me) && me.Code == mysql.ER_NO_SUCH_TABLE {
			return nil // the applier never ran here: no row came from elsewhere
		}
		if err != nil {
			return fmt.Errorf("reading the applier's row clocks in %s: %w", meta, err)
		}
		for i := range r.RowNumber() {
			h, _ := r.GetString(i, 0)
			origin, _ := r.GetString(i, 1)
			if origin != s.w.c.cfg.Site {
				foreign[strings.Clone(h)] = true // GetString aliases the result's buffer
			}
		}
		r.Close()
	}
	if len(foreign) == 0 {
		return nil
	}
	kept := ch.rows[:0]
	for i, e := range ch.rows {
		if !foreign[string(hashes[i])] {
			kept = append(kept, e)
		}
	}
	s.skipped += uint64(len(ch.rows) - len(kept))
	ch.rows = kept
	return nil
}

// fail closes the snapshot connection after an error, so the next read starts clean.
func (s *snapshotter) fail(err error) error {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	return err
}

func (s *snapshotter) close() {
	if s != nil && s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

func sameNames(key journal.Row, pk []string) bool {
	if len(key) != len(pk) {
		return false
	}
	for i := range key {
		if key[i].Name != pk[i] {
			return false
		}
	}
	return true
}

// tableColumns returns a table's columns in order and its primary key's; none if it is gone.
func tableColumns(conn *client.Conn, t tableRef) (cols, pk []string, err error) {
	r, err := conn.Execute("SELECT COLUMN_NAME, COLUMN_KEY FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION", t.db, t.table)
	if err != nil {
		return nil, nil, err
	}
	for i := range r.RowNumber() {
		name, _ := r.GetString(i, 0)
		cols = append(cols, name)
	}
	r, err = conn.Execute("SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX", t.db, t.table)
	if err != nil {
		return nil, nil, err
	}
	for i := range r.RowNumber() {
		name, _ := r.GetString(i, 0)
		pk = append(pk, name)
	}
	return cols, pk, nil
}

func estimateRows(conn *client.Conn, t tableRef) (uint64, error) {
	r, err := conn.Execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", t.db, t.table)
	if err != nil || r.RowNumber() == 0 {
		return 0, err
	}
	return r.GetUint(0, 0)
}

func quoteID(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// chunkQuery is the SELECT of the chunk after key after (nil: from the start), in key order:
// for a key (a, b), "a > ? OR (a = ? AND b > ?)", which MariaDB reads as key ranges.
func chunkQuery(t tableRef, cols, pk []string, after journal.Row, limit int) (string, []any) {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quoteID(c))
	}
	b.WriteString(" FROM " + quoteID(t.db) + "." + quoteID(t.table))
	var args []any
	if after != nil {
		b.WriteString(" WHERE ")
		for i := range pk {
			if i > 0 {
				b.WriteString(" OR ")
			}
			b.WriteString("(")
			for j := 0; j < i; j++ {
				b.WriteString(quoteID(pk[j]) + " = ? AND ")
				args = append(args, after[j].Value.SQLArg())
			}
			b.WriteString(quoteID(pk[i]) + " > ?)")
			args = append(args, after[i].Value.SQLArg())
		}
	}
	b.WriteString(" ORDER BY ")
	for i, k := range pk {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quoteID(k))
	}
	b.WriteString(" LIMIT ?")
	args = append(args, limit)
	return b.String(), args
}

// snapValue converts a value of a binary-protocol result (the session in utf8mb4 and UTC) into
// the journal value the binlog decoder gives the same column (decode.go).
func snapValue(f *mysql.Field, v mysql.FieldValue) (journal.Value, error) {
	if v.Type == mysql.FieldValueTypeNull {
		return journal.Null(), nil
	}
	unsigned := f.Flag&mysql.UNSIGNED_FLAG != 0
	switch f.Type {
	case mysql.MYSQL_TYPE_TINY, mysql.MYSQL_TYPE_SHORT, mysql.MYSQL_TYPE_INT24, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONGLONG:
		if unsigned {
			return journal.Uint(v.AsUint64()), nil
		}
		return journal.Int(v.AsInt64()), nil
	case mysql.MYSQL_TYPE_YEAR:
		return journal.Value{Kind: journal.KindTemporal, Str: fmt.Sprintf("%04d", v.AsUint64())}, nil
	case mysql.MYSQL_TYPE_FLOAT:
		return journal.Value{Kind: journal.KindFloat32, Float: v.AsFloat64()}, nil
	case mysql.MYSQL_TYPE_DOUBLE:
		return journal.Float64(v.AsFloat64()), nil
	case mysql.MYSQL_TYPE_NEWDECIMAL, mysql.MYSQL_TYPE_DECIMAL:
		return journal.Decimal(string(v.AsString())), nil
	case mysql.MYSQL_TYPE_BIT:
		var n uint64
		for _, c := range v.AsString() {
			n = n<<8 | uint64(c)
		}
		return journal.Uint(n), nil
	case mysql.MYSQL_TYPE_DATE, mysql.MYSQL_TYPE_NEWDATE:
		return journal.Value{Kind: journal.KindTemporal, Str: string(v.AsString())}, nil
	case mysql.MYSQL_TYPE_DATETIME, mysql.MYSQL_TYPE_TIMESTAMP, mysql.MYSQL_TYPE_TIME:
		return journal.Value{Kind: journal.KindTemporal, Str: exactFraction(string(v.AsString()), int(f.Decimal))}, nil
	case mysql.MYSQL_TYPE_JSON:
		return journal.Value{Kind: journal.KindJSON, Str: string(v.AsString())}, nil
	case mysql.MYSQL_TYPE_GEOMETRY:
		return journal.Bytes(append([]byte{}, v.AsString()...)), nil
	case mysql.MYSQL_TYPE_STRING, mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_BLOB,
		mysql.MYSQL_TYPE_TINY_BLOB, mysql.MYSQL_TYPE_MEDIUM_BLOB, mysql.MYSQL_TYPE_LONG_BLOB, mysql.MYSQL_TYPE_ENUM, mysql.MYSQL_TYPE_SET:
		b := v.AsString()
		if f.Charset != binaryCollation && utf8.Valid(b) {
			return journal.String(string(b)), nil
		}
		return journal.Bytes(append([]byte{}, b...)), nil
	}
	return journal.Value{}, fmt.Errorf("column type %d not supported by snapshots", f.Type)
}

// exactFraction gives a temporal text of the binary protocol (no fraction, or six digits)
// exactly fsp fractional digits, as the server shows the column.
func exactFraction(s string, fsp int) string {
	frac := ""
	if dot := strings.LastIndexByte(s, '.'); dot >= 0 {
		s, frac = s[:dot], s[dot+1:]
	}
	if fsp <= 0 || fsp > 6 {
		return s
	}
	frac += strings.Repeat("0", 6)
	return s + "." + frac[:fsp]
}

// keyText renders a key for logs.
func keyText(k journal.Row) string {
	if k == nil {
		return ""
	}
	parts := make([]string, len(k))
	for i, f := range k {
		v := f.Value
		switch v.Kind {
		case journal.KindInt:
			parts[i] = f.Name + "=" + strconv.FormatInt(v.Int, 10)
		case journal.KindUint:
			parts[i] = f.Name + "=" + strconv.FormatUint(v.Uint, 10)
		case journal.KindBytes:
			parts[i] = fmt.Sprintf("%s=%x", f.Name, v.Bytes)
		default:
			parts[i] = f.Name + "=" + v.Str
		}
	}
	return strings.Join(parts, ",")
}

// track keeps the loop's binlog coordinates after an event it has handled: pos, the end of the
// last event handled outside a transaction, and stateAt, the end of the last transaction (or the
// start point): between stateAt and pos the data is the same.
func (w *txWriter) track(ev *replication.BinlogEvent) {
	if r, ok := ev.Event.(*replication.RotateEvent); ok {
		w.pos = binPos{string(r.NextLogName), r.Position}
		return
	}
	h := ev.Header
	if h.LogPos == 0 || w.gtid != "" || w.file == "" {
		return
	}
	switch ev.Event.(type) {
	case *replication.HeartbeatEvent:
		return // its coordinates are the dump thread's, not necessarily this file's
	case *replication.XIDEvent, *replication.QueryEvent:
		w.pos = binPos{w.file, uint64(h.LogPos)}
		w.stateAt, w.stateKnown, w.sawTx = w.pos, true, true
	case *replication.MariadbGTIDListEvent:
		w.pos = binPos{w.file, uint64(h.LogPos)}
		if !w.sawTx {
			// Sent at the start of a GTID dump, at the start position: the state there is the
			// journal's.
			w.stateAt, w.stateKnown = w.pos, true
		}
	default:
		w.pos = binPos{w.file, uint64(h.LogPos)}
	}
}
