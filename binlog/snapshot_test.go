package binlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// snapRow is a row of the tables these tests snapshot: (id INT PRIMARY KEY, v VARCHAR, n INT).
type snapRow struct {
	v string
	n int64
}

func rowOf(r journal.Row) (int64, snapRow) {
	var id int64
	var out snapRow
	for _, f := range r {
		switch f.Name {
		case "id":
			id = f.Value.Int
		case "v":
			out.v = f.Value.Str
		case "n":
			out.n = f.Value.Int
		}
	}
	return id, out
}

// replay applies the stream's entries of table to a map, strictly: a change to a key the
// snapshot has already read must find the row as its before image says (an insert: no row), so a
// change missing or journaled twice fails; a change to a key the snapshot has not reached yet
// is applied as it comes (the snapshot's read of it, later, carries its state then). Each chunk
// must hold exactly the rows the map has in its key range. It returns the map and how often each
// key was read by the snapshot.
func replay(t *testing.T, es []journal.Entry, table string) (map[int64]snapRow, map[int64]int) {
	t.Helper()
	rows, reads := map[int64]snapRow{}, map[int64]int{}
	var progress int64 = -1 << 62 // keys <= progress have been read
	done := false
	var chunk []journal.Entry
	reached := func(id int64) bool { return done || id <= progress }
	for _, e := range es {
		if e.Table != table && !(e.Op == journal.OpMark && e.Statement == stateStatement) {
			continue
		}
		switch e.Op {
		case journal.OpRead:
			chunk = append(chunk, e)
			if !e.Tx.Last {
				continue
			}
			lo := progress
			for _, r := range chunk {
				id, row := rowOf(r.After)
				if id <= lo {
					t.Fatalf("seq %d: read of key %d, at or below the snapshot's progress %d", r.Seq, id, lo)
				}
				if have, ok := rows[id]; ok && have != row {
					t.Fatalf("seq %d: read of key %d = %+v, but the changes before it left %+v", r.Seq, id, row, have)
				}
				rows[id] = row
				reads[id]++
				progress = id
			}
			for id := range rows { // rows the changes before the chunk left in its range
				if id > lo && id <= progress && reads[id] == 0 {
					t.Fatalf("key %d is in the range of the chunk ending at seq %d, which does not hold it", id, chunk[len(chunk)-1].Seq)
				}
			}
			chunk = chunk[:0]
		case journal.OpMark:
			for _, c := range e.Columns {
				if strings.HasSuffix(c.Name, "."+table) && !done {
					done = true
					for id := range rows { // the last chunk's range is everything after it
						if id > progress && reads[id] == 0 {
							t.Fatalf("key %d after the snapshot's last chunk (progress %d) was never read", id, progress)
						}
					}
				}
			}
		case journal.OpInsert:
			id, row := rowOf(e.After)
			if _, ok := rows[id]; ok && reached(id) {
				t.Fatalf("seq %d (gtid %s): insert of key %d, which is there: a change journaled twice", e.Seq, e.Source.GTID, id)
			}
			rows[id] = row
		case journal.OpUpdate:
			id, before := rowOf(e.Before)
			nid, after := rowOf(e.After)
			if have, ok := rows[id]; reached(id) && (!ok || have != before) {
				t.Fatalf("seq %d (gtid %s): update of key %d from %+v, but it is %+v (there: %v): a change missing or doubled", e.Seq, e.Source.GTID, id, before, have, ok)
			}
			delete(rows, id)
			rows[nid] = after
		case journal.OpDelete:
			id, before := rowOf(e.Before)
			if have, ok := rows[id]; reached(id) && (!ok || have != before) {
				t.Fatalf("seq %d (gtid %s): delete of key %d from %+v, but it is %+v (there: %v)", e.Seq, e.Source.GTID, id, before, have, ok)
			}
			delete(rows, id)
		}
	}
	if !done {
		t.Fatalf("the snapshot of %s is not marked done", table)
	}
	return rows, reads
}

// tableRows reads the table's content.
func (env *captureEnv) tableRows(table string) map[int64]snapRow {
	env.t.Helper()
	r, err := env.conn.Execute("SELECT id, v, n FROM " + env.db + "." + table)
	if err != nil {
		env.t.Fatal(err)
	}
	out := map[int64]snapRow{}
	for i := range r.RowNumber() {
		id, _ := r.GetInt(i, 0)
		v, _ := r.GetString(i, 1)
		n, _ := r.GetInt(i, 2)
		out[id] = snapRow{v, n}
	}
	return out
}

func (env *captureEnv) fill(table string, rows int) {
	env.t.Helper()
	env.exec("CREATE TABLE " + env.db + "." + table + " (id INT PRIMARY KEY, v VARCHAR(40), n INT)")
	for lo := 1; lo <= rows; lo += 500 {
		var vals []string
		for id := lo; id < lo+500 && id <= rows; id++ {
			vals = append(vals, fmt.Sprintf("(%d, 'row %d', %d)", id*2, id, id))
		}
		env.exec("INSERT INTO " + env.db + "." + table + " VALUES " + strings.Join(vals, ","))
	}
}

// waitSnapshotted waits until the capture's snapshots are done and table's rows are all there.
func (env *captureEnv) waitSnapshotted() {
	env.t.Helper()
	testenv.WaitFor(env.t, 60*time.Second, "the snapshots to finish", func() bool {
		p := env.cap.SnapshotProgress()
		return p.Done > 0 && len(p.Pending) == 0
	})
}

// sentinel writes a row in a table of its own and waits for it in the journal: the capture has
// then journaled everything committed before.
func (env *captureEnv) sentinel(n int) {
	env.t.Helper()
	if n == 1 {
		env.exec("CREATE TABLE " + env.db + ".sentinel (id INT PRIMARY KEY)")
	}
	env.exec(fmt.Sprintf("INSERT INTO %s.sentinel VALUES (%d)", env.db, n))
	env.waitRows("sentinel", n+1) // the CREATE and n rows
}

// A table with rows before the capture starts is snapshotted in chunks of the configured size,
// then its changes stream; the journal replayed equals the table.
func TestSnapshotThenStream(t *testing.T) {
	env := newCaptureEnv(t, 1000)
	env.fill("t", 2500)
	env.cap.cfg.Source.SnapshotChunkRows = 300
	stop := env.start(1)
	env.waitSnapshotted()
	env.exec("INSERT INTO " + env.db + ".t VALUES (1, 'new', 1)")
	env.exec("UPDATE " + env.db + ".t SET n = n + 1 WHERE id <= 100")
	env.exec("DELETE FROM " + env.db + ".t WHERE id > 4000")
	es, reads := env.stopAndReplay(stop, "t")
	if len(reads) != 2500 {
		t.Errorf("%d rows read by the snapshot, want 2500", len(reads))
	}
	chunks := 0
	for _, e := range es {
		if e.Op == journal.OpRead {
			if e.Tx.Count > 300 || e.Tx.Index >= 300 {
				t.Fatalf("chunk entry %+v: chunks hold at most 300 rows", e.Tx)
			}
			if e.Tx.Last {
				chunks++
				if e.Source.Position == "" {
					t.Fatalf("a chunk ends without a resume position")
				}
			}
		}
	}
	if chunks != 9 {
		t.Errorf("%d chunks, want 9 (2500 rows by 300)", chunks)
	}
	if p := env.cap.SnapshotProgress(); p.Done != 2 { // t and sentinel (created in the stream)
		t.Errorf("progress %+v", p)
	}
}

// stopAndReplay journals a sentinel (everything committed before it is then journaled), stops
// the capture, replays the stream's entries of table strictly (replay) and checks the result
// against the table. It returns the entries and how often each key was read by the snapshot.
func (env *captureEnv) stopAndReplay(stop func() error, table string) ([]journal.Entry, map[int64]int) {
	env.t.Helper()
	env.sentinel(1)
	if err := stop(); err != nil {
		env.t.Fatal(err)
	}
	es := env.entries()
	got, reads := replay(env.t, es, table)
	if want := env.tableRows(table); !mapsEqual(got, want) {
		env.t.Fatalf("journal replayed: %d rows; table: %d rows", len(got), len(want))
	}
	return es, reads
}

func mapsEqual(a, b map[int64]snapRow) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// writeLoad inserts, updates and deletes rows of table (keys 1..2*rows+1000) until stop is
// closed, in transactions of 1-3 statements; it returns the number of transactions.
func (env *captureEnv) writeLoad(table string, rows int, stop <-chan struct{}, done chan<- error) {
	conn, err := Connect(context.Background(), env.src)
	if err != nil {
		done <- err
		return
	}
	defer conn.Close()
	tbl := env.db + "." + table
	for i := 0; ; i++ {
		select {
		case <-stop:
			done <- nil
			return
		default:
		}
		if _, err := conn.Execute("BEGIN"); err != nil {
			done <- err
			return
		}
		for range 1 + rand.IntN(3) {
			id := 1 + rand.IntN(2*rows+1000)
			var q string
			switch rand.IntN(3) {
			case 0:
				q = fmt.Sprintf("INSERT INTO %s VALUES (%d, 'w%d', %d) ON DUPLICATE KEY UPDATE n = n + 1", tbl, id, i, i)
			case 1:
				q = fmt.Sprintf("UPDATE %s SET n = n + 1, v = 'u%d' WHERE id BETWEEN %d AND %d", tbl, i, id, id+3)
			default:
				q = fmt.Sprintf("DELETE FROM %s WHERE id = %d", tbl, id)
			}
			if _, err := conn.Execute(q); err != nil {
				done <- err
				return
			}
		}
		if _, err := conn.Execute("COMMIT"); err != nil {
			done <- err
			return
		}
		if env.pace > 0 {
			time.Sleep(env.pace) // pacing the load, not waiting for anything
		}
	}
}

// Snapshot-to-stream handoff under concurrent writes: while the table is snapshotted, a writer
// inserts, updates and deletes its rows. Replayed strictly, the journal has no change missing or
// doubled, each chunk holds exactly the rows the changes before it left in its range, and the
// result equals the table.
func TestSnapshotHandoffUnderConcurrentWrites(t *testing.T) {
	env := newCaptureEnv(t, 100)
	const rows = 3000
	env.fill("t", rows)
	env.cap.cfg.Source.SnapshotChunkRows = 100
	stopW, wdone := make(chan struct{}), make(chan error, 1)
	go env.writeLoad("t", rows, stopW, wdone)
	stop := env.start(1)
	env.waitSnapshotted()
	close(stopW)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	es, reads := env.stopAndReplay(stop, "t")
	changes := 0
	for _, e := range es {
		if e.Table == "t" && (e.Op == journal.OpInsert || e.Op == journal.OpUpdate || e.Op == journal.OpDelete) {
			changes++
		}
	}
	for id, n := range reads {
		if n != 1 {
			t.Fatalf("key %d read %d times", id, n)
		}
	}
	t.Logf("%d rows read, %d changes journaled during and after the snapshot", len(reads), changes)
	if changes == 0 {
		t.Fatal("no change was journaled: the test did not write concurrently")
	}
}

// A capture stopped at random points during a snapshot under concurrent writes resumes after the
// last chunk journaled: no key is read twice, none is missed, and the result is exact.
func TestSnapshotResumesAfterStops(t *testing.T) {
	env := newCaptureEnv(t, 50)
	const rows = 3000
	env.fill("t", rows)
	env.cap.cfg.Source.SnapshotChunkRows = 50
	stopW, wdone := make(chan struct{}), make(chan error, 1)
	go env.writeLoad("t", rows, stopW, wdone)
	epoch := uint64(1)
	stop := env.start(epoch)
	restarts := 0
	for env.cap.SnapshotProgress().Done == 0 || len(env.cap.SnapshotProgress().Pending) > 0 {
		// Stop at a random point: once this run has journaled a chunk, and the journal has grown
		// by a random number of entries after it (0 to 2 chunks' worth).
		chunksBefore := env.cap.SnapshotProgress().Chunks
		var h journal.Head
		grow := uint64(rand.IntN(100))
		var finished atomic.Bool
		testenv.WaitFor(t, 60*time.Second, "the snapshot to go on", func() bool {
			p := env.cap.SnapshotProgress()
			if p.Done > 0 && len(p.Pending) == 0 {
				finished.Store(true)
				return true
			}
			h2, _ := env.store.Head(context.Background(), env.cap.Stream())
			if h.Seq == 0 {
				if p.Chunks == chunksBefore {
					return false
				}
				h = h2
			}
			return h2.Seq >= h.Seq+grow
		})
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if finished.Load() {
			break
		}
		restarts++
		epoch++
		stop = env.start(epoch)
	}
	close(stopW)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	stop = env.start(epoch + 1)
	_, reads := env.stopAndReplay(stop, "t")
	for id, n := range reads {
		if n != 1 {
			t.Fatalf("key %d read %d times", id, n)
		}
	}
	t.Logf("%d restarts during the snapshot; %d rows read", restarts, len(reads))
	if restarts < 3 {
		t.Errorf("only %d restarts during the snapshot", restarts)
	}
}

// A row of every type read by the initial snapshot is journaled with exactly the values the
// binary log gives the same row: a reader cannot tell a snapshot's row from a streamed one.
func TestSnapshotTypesMatchStream(t *testing.T) {
	env := newCaptureEnv(t, 1000)
	env.typesTable()
	env.typesRow(1)
	stop := env.start(1)
	env.waitSnapshotted()
	env.typesRow(2)
	env.waitRows("types", 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var read, streamed *journal.Entry
	for _, e := range env.entries() {
		if e.Table != "types" {
			continue
		}
		switch e.Op {
		case journal.OpRead:
			read = &e
		case journal.OpInsert:
			streamed = &e
		}
	}
	if read == nil || streamed == nil {
		t.Fatalf("snapshot read %v, streamed insert %v", read != nil, streamed != nil)
	}
	if len(read.After) != len(streamed.After) {
		t.Fatalf("the snapshot's row has %d columns, the stream's %d", len(read.After), len(streamed.After))
	}
	for i, f := range streamed.After {
		g := read.After[i]
		if g.Name != f.Name {
			t.Fatalf("column %d: %s in the snapshot, %s in the stream", i, g.Name, f.Name)
		}
		if f.Name == "id" {
			continue
		}
		if !g.Value.Equal(f.Value) {
			t.Errorf("%s: snapshot %+v, stream %+v", f.Name, g.Value, f.Value)
		}
	}
}

// A snapshot leaves out the rows whose row clock (kept by the applier writing into the same
// database) names another site as their last writer: they came from there, and journaling them
// again as this site's would echo them back. Rows last written here (clock origin a) or never by
// the applier (no clock) are read.
func TestSnapshotLeavesOutRowsAppliedFromOtherSites(t *testing.T) {
	env := newCaptureEnv(t, 1000)
	env.fill("t", 10) // ids 2, 4, ..., 20
	meta := env.db + "_meta"
	env.exec("CREATE DATABASE " + meta)
	t.Cleanup(func() { env.exec("DROP DATABASE IF EXISTS " + meta) })
	env.exec("CREATE TABLE " + meta + `.row_clock (db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL, pk_hash BINARY(32) NOT NULL,
		hlc_wall BIGINT NOT NULL, hlc_logical INT UNSIGNED NOT NULL, origin VARCHAR(64) NOT NULL, PRIMARY KEY (db, tbl, pk_hash))`)
	for id, origin := range map[int64]string{4: "b", 8: "b", 20: "c", 6: "a", 99: "b"} { // 99: a tombstone
		env.exec("INSERT INTO "+meta+".row_clock VALUES (?, 't', ?, 1, 0, ?)", env.db, journal.Row{{Name: "id", Value: journal.Int(id)}}.KeyHash(), origin)
	}
	env.cap.cfg.AppliedClocks = meta
	env.cap.cfg.Source.SnapshotChunkRows = 3
	stop := env.start(1)
	env.waitSnapshotted()
	env.sentinel(1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var read []int64
	for _, e := range env.entries() {
		if e.Op == journal.OpRead && e.Table == "t" {
			id, _ := rowOf(e.After)
			read = append(read, id)
		}
	}
	if want := []int64{2, 6, 10, 12, 14, 16, 18}; fmt.Sprint(read) != fmt.Sprint(want) {
		t.Errorf("snapshot read %v, want %v (not 4, 8 and 20, last written by sites b and c)", read, want)
	}
}
