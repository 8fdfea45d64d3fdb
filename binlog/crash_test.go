package binlog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/musicd/musicd/locks"
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
	src.SnapshotChunkRows, _ = strconv.Atoi(os.Getenv("MUSICD_TEST_SNAPSHOT_CHUNK"))
	store, err := journal.OpenEmbedded(os.Getenv("MUSICD_TEST_JOURNAL"), discard())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	logger := discard()
	if os.Getenv("MUSICD_TEST_LOG") == "1" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	c := NewCapture(CaptureConfig{Source: src, Site: "a", ChunkEntries: 5}, store, journal.NewClock(time.Now, 0), logger)
	if src.SnapshotChunkRows > 0 {
		// Tell the test each snapshot chunk this run journals (one line each), so that it can
		// kill the run at a chosen point of the snapshot.
		go func() {
			var seen uint64
			for range time.Tick(5 * time.Millisecond) {
				if p := c.SnapshotProgress(); p.Chunks > seen {
					seen = p.Chunks
					fmt.Printf("chunk %d\n", seen)
				}
			}
		}()
	}
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

	run := func() *exec.Cmd { return env.captureChild(dir, 0) }
	load := env.txLoad(tbl, 150)
	for range 20 {
		cmd := run()
		time.Sleep(time.Duration(20+rand.IntN(150)) * time.Millisecond) // a random point to crash at
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	sizes := load.wait()
	// A last, in-process run catches up.
	useJournal()
	stop = env.start(uint64(time.Now().UnixNano()))
	env.checkTransactions("t", sizes)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// txLoad commits count transactions of 1 to 12 inserts into tbl (id, tx, k), in the background;
// wait returns the sizes of the transactions committed.
type txLoad struct {
	t     *testing.T
	sizes []int
	done  chan error
}

func (env *captureEnv) txLoad(tbl string, count int) *txLoad {
	l := &txLoad{t: env.t, done: make(chan error, 1)}
	go func() {
		id := 0
		for tx := range count {
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
				l.done <- err
				return
			}
			l.sizes = append(l.sizes, n)                               // read only after done
			time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond) // spreads the load over time
		}
		l.done <- nil
	}()
	return l
}

func (l *txLoad) wait() []int {
	l.t.Helper()
	if err := <-l.done; err != nil {
		l.t.Fatal(err)
	}
	return l.sizes
}

// checkTransactions waits for the rows of the transactions of sizes in table and checks that the
// journal holds each exactly once, in commit order, each whole.
func (env *captureEnv) checkTransactions(table string, sizes []int) {
	t := env.t
	t.Helper()
	total := 0
	for _, n := range sizes {
		total += n
	}
	got := env.waitRows(table, total)
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

// captureChild starts this test binary as a capture process (see TestMain) on the journal
// directory dir; snapshotChunk sets its snapshot chunk rows (0: the default).
func (env *captureEnv) captureChild(dir string, snapshotChunk int) *exec.Cmd {
	env.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MUSICD_TEST_CAPTURE=1", "GORACE=atexit_sleep_ms=0",
		"MUSICD_TEST_ADDR="+env.src.Addr, "MUSICD_TEST_DB="+env.db, "MUSICD_TEST_JOURNAL="+dir,
		fmt.Sprintf("MUSICD_TEST_SERVER_ID=%d", env.src.ServerID), fmt.Sprintf("MUSICD_TEST_SNAPSHOT_CHUNK=%d", snapshotChunk))
	cmd.Stderr = os.Stderr
	if snapshotChunk == 0 {
		if err := cmd.Start(); err != nil {
			env.t.Fatal(err)
		}
	}
	return cmd
}

// kill -9 of the capture at random points during an initial snapshot under concurrent writes:
// each restart resumes after the last chunk journaled; no key is read twice, none is missed, and
// the journal replays to exactly the table.
func TestSnapshotSurvivesKill9(t *testing.T) {
	env := newCaptureEnv(t, 50)
	const rows = 20000
	env.fill("t", rows)
	dir := filepath.Join(t.TempDir(), "journal")
	// A load the race-instrumented children keep up with: a snapshot chunk is journaled only once
	// the capture reaches the binlog position it was read at.
	env.pace = 3 * time.Millisecond
	stopW, wdone := make(chan struct{}), make(chan error, 1)
	go env.writeLoad("t", rows, stopW, wdone)
	for range 10 {
		cmd := env.captureChild(dir, 50)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		chunks := make(chan struct{})
		go func() { // ends when the child does
			defer close(chunks)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				chunks <- struct{}{}
			}
		}()
		// Kill the run once it has journaled a random number of chunks (1 to 30 of 50 rows).
		kill := 1 + rand.IntN(30)
		deadline := time.After(60 * time.Second)
	wait:
		for n := 0; n < kill; n++ {
			select {
			case _, ok := <-chunks:
				if !ok {
					break wait // the child ended (the snapshot is done, or it failed: see its stderr)
				}
			case <-deadline:
				t.Errorf("a capture run journaled %d snapshot chunks in 60s", n)
				break wait
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for range chunks { // drain
		}
		_ = cmd.Wait()
	}
	close(stopW)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	// A last, in-process run finishes the snapshot and catches up.
	s, err := journal.OpenEmbedded(dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	env.store, env.cap.store = s, s
	env.cap.cfg.Source.SnapshotChunkRows = 50
	stop := env.start(uint64(time.Now().UnixNano()))
	env.waitSnapshotted()
	es, reads := env.stopAndReplay(stop, "t")
	for id, n := range reads {
		if n != 1 {
			t.Fatalf("key %d read %d times", id, n)
		}
	}
	// The kills fell inside the snapshot: several runs journaled its chunks.
	runs := map[uint64]bool{}
	for _, e := range es {
		if e.Op == journal.OpRead {
			runs[e.Epoch] = true
		}
	}
	t.Logf("%d rows read by %d runs", len(reads), len(runs))
	if len(runs) < 8 {
		t.Errorf("only %d runs journaled snapshot chunks", len(runs))
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

// Two musicd instances of one site campaign for the capture of a source (real ZooKeeper, one
// session each): one captures; when its session ends (its daemon died), the standby takes over
// from the last journaled GTID under a new epoch, and the journal holds every committed
// transaction exactly once.
func TestCaptureStandbyTakesOver(t *testing.T) {
	env := newCaptureEnv(t, 5)
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, tx INT, k INT)")
	root := "/" + testenv.UniqueName("musicd-test-binlog-")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type instance struct {
		z    *locks.ZooKeeper
		cap  *Capture
		done chan error
	}
	start := func(name string) *instance {
		zcfg := locks.DefaultZooKeeperConfig()
		zcfg.Servers, zcfg.Root, zcfg.SessionTimeout = []string{testenv.ZooKeeper(t)}, root, 4*time.Second
		dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
		defer dcancel()
		z, err := locks.DialZooKeeper(dctx, zcfg, discard())
		if err != nil {
			t.Fatal(err)
		}
		svc, err := locks.NewZooKeeperService(dctx, z, locks.ZooKeeperServiceConfig{Logger: discard()})
		if err != nil {
			t.Fatal(err)
		}
		in := &instance{z: z, cap: NewCapture(env.cap.cfg, env.store, journal.NewClock(time.Now, 0), discard()), done: make(chan error, 1)}
		go func() { in.done <- in.cap.RunElected(ctx, svc, name) }()
		t.Cleanup(func() {
			cancel()
			<-in.done
			_ = svc.Close()
			z.Close()
		})
		return in
	}
	a := start("instance-a")
	env.waitStarted()
	b := start("instance-b")
	h1, err := env.store.Head(ctx, env.cap.Stream())
	if err != nil {
		t.Fatal(err)
	}
	load := env.txLoad(tbl, 300)
	testenv.WaitFor(t, 30*time.Second, "a's capture to journal transactions", func() bool {
		return len(env.rowEntries("t")) > 50
	})
	a.z.Close() // a's daemon is gone: its session ends, its leadership with it
	testenv.WaitFor(t, 30*time.Second, "b to take the stream over under a new epoch", func() bool {
		h, err := env.store.Head(ctx, env.cap.Stream())
		return err == nil && h.Epoch > h1.Epoch
	})
	sizes := load.wait()
	env.checkTransactions("t", sizes)
	epochs := map[uint64]int{}
	for _, e := range env.rowEntries("t") {
		epochs[e.Epoch]++
	}
	if len(epochs) != 2 {
		t.Errorf("rows journaled under epochs %v, want a's and b's", epochs)
	}
	if b.cap.Stream() != a.cap.Stream() {
		t.Fatalf("two streams: %s, %s", a.cap.Stream(), b.cap.Stream())
	}
}
