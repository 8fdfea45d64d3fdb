package binlog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// The test binary doubles as a capture process that tests kill -9: with MUSICD_TEST_CAPTURE=1 it
// captures the database named in the environment into the journal directory named there.
func TestMain(m *testing.M) {
	if os.Getenv("MUSICD_TEST_CAPTURE") == "1" {
		os.Exit(captureChild())
	}
	os.Exit(m.Run())
}

func captureChild() int {
	id, _ := strconv.Atoi(os.Getenv("MUSICD_TEST_SERVER_ID"))
	db := os.Getenv("MUSICD_TEST_DB")
	src := SourceConfig{Name: "a", Addr: os.Getenv("MUSICD_TEST_ADDR"), User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		ServerID: uint32(id), Tables: policies.Tables{{Match: db + ".*", Mode: policies.ModeAsync}}}
	store, err := journal.OpenEmbedded(os.Getenv("MUSICD_TEST_JOURNAL"), discard())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	c := NewCapture(CaptureConfig{Source: src, Site: "a", ChunkEntries: 5}, store, journal.NewClock(time.Now, 0), discard())
	// Each run is a new writer: a higher epoch than any before (nanoseconds since 1970).
	if err := c.Supervise(context.Background(), uint64(time.Now().UnixNano())); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// kill -9 of the capture at 20 random points under a write load: afterwards the journal holds
// every committed transaction exactly once, in commit order, each whole.
func TestCaptureSurvivesKill9(t *testing.T) {
	env := newCaptureEnv(t, 5)
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, tx INT, k INT)")
	dir := filepath.Join(t.TempDir(), "journal")

	// In-process first run on the journal directory the children use: it records the start
	// position before any write.
	useJournal := func() {
		s, err := journal.OpenEmbedded(dir, discard())
		if err != nil {
			t.Fatal(err)
		}
		env.store, env.cap.store = s, s
	}
	useJournal()
	stop := env.start(1)
	env.waitStarted()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	env.store.Close()

	run := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "MUSICD_TEST_CAPTURE=1", "GORACE=atexit_sleep_ms=0",
			"MUSICD_TEST_ADDR="+env.src.Addr, "MUSICD_TEST_DB="+env.db, "MUSICD_TEST_JOURNAL="+dir,
			fmt.Sprintf("MUSICD_TEST_SERVER_ID=%d", env.src.ServerID))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	var sizes []int
	writerDone := make(chan error, 1)
	go func() {
		id := 0
		for tx := range 150 {
			n := 1 + rand.IntN(12)
			q := "INSERT INTO " + tbl + " VALUES "
			for k := range n {
				id++
				if k > 0 {
					q += ","
				}
				q += fmt.Sprintf("(%d,%d,%d)", id, tx, k)
			}
			if _, err := env.conn.Execute(q); err != nil {
				writerDone <- err
				return
			}
			sizes = append(sizes, n)                                   // read only after writerDone
			time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond) // spreads the load over the kills
		}
		writerDone <- nil
	}()
	for range 20 {
		cmd := run()
		time.Sleep(time.Duration(20+rand.IntN(150)) * time.Millisecond) // a random point to crash at
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range sizes {
		total += n
	}
	// A last, in-process run catches up.
	useJournal()
	stop = env.start(uint64(time.Now().UnixNano()))
	got := env.waitRows("t", total)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(got) != total {
		t.Fatalf("journal has %d row entries, %d rows were committed", len(got), total)
	}
	i := 0
	for tx, n := range sizes {
		for k := range n {
			e := got[i]
			if !value(e, e.After, "tx").Equal(journal.Int(int64(tx))) || !value(e, e.After, "k").Equal(journal.Int(int64(k))) ||
				e.Tx.Index != uint32(k) || e.Tx.Last != (k == n-1) {
				t.Fatalf("entry %d: tx %+v k %+v (Tx %+v), want tx %d k %d of %d", i, value(e, e.After, "tx"), value(e, e.After, "k"), e.Tx, tx, k, n)
			}
			i++
		}
	}
}

// failingStore fences the capture out from the n-th Append on, as losing the election between
// two chunks of a transaction would.
type failingStore struct {
	journal.Store
	mu    sync.Mutex
	calls int
	failN int
}

func (f *failingStore) Append(ctx context.Context, stream string, epoch uint64, es []journal.Entry) error {
	f.mu.Lock()
	f.calls++
	fail := f.calls >= f.failN
	f.mu.Unlock()
	if fail {
		return fmt.Errorf("injected: %w", journal.ErrFenced)
	}
	return f.Store.Append(ctx, stream, epoch, es)
}

// A capture that stops after some chunks of a large transaction resumes inside it: the chunks
// already journaled are not journaled again, and the transaction ends whole.
func TestCaptureResumesInsideATransaction(t *testing.T) {
	env := newCaptureEnv(t, 4)
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, tx INT, k INT)")
	stop := env.start(1)
	env.waitStarted()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	env.exec("INSERT INTO " + tbl + " VALUES (1,0,0),(2,0,1),(3,0,2)")
	q := "INSERT INTO " + tbl + " VALUES "
	for k := range 23 {
		if k > 0 {
			q += ","
		}
		q += fmt.Sprintf("(%d,1,%d)", 10+k, k)
	}
	env.exec(q)
	// Appends carry groups of at most 4 entries (the first transaction shares one with the first
	// chunk of the second): the 4th append fails in the middle of the second transaction.
	real := env.cap.store
	env.cap.store = &failingStore{Store: real, failN: 4}
	err := env.cap.Run(context.Background(), 2)
	if !errors.Is(err, journal.ErrFenced) {
		t.Fatalf("Run: %v, want the injected ErrFenced", err)
	}
	partial := env.rowEntries("t")
	if n := len(partial); n <= 3 || n >= 3+23 || partial[n-1].Tx.Last {
		t.Fatalf("%d entries after the failure (last %+v), want the large transaction cut off after some chunks", n, partial[n-1].Tx)
	}
	env.cap.store = real
	stop = env.start(3)
	got := env.waitRows("t", 3+23)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 26 {
		t.Fatalf("%d entries, want 26", len(got))
	}
	for i, e := range got[3:] {
		if !value(e, e.After, "k").Equal(journal.Int(int64(i))) || e.Tx.Index != uint32(i) || e.Tx.Last != (i == 22) || e.Tx.ID != got[3].Tx.ID {
			t.Fatalf("entry %d of the large transaction: k %+v Tx %+v", i, value(e, e.After, "k"), e.Tx)
		}
	}
}
