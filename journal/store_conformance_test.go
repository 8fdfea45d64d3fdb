package journal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

// harness gives the conformance suite the stores to test.
type harness struct {
	// store returns the store under test (shared by the subtests; they use streams of their own).
	store func(t *testing.T) Store
	// peer returns a second handle on the same storage, as another musicd process would have
	// (or the same handle where the storage allows only one).
	peer func(t *testing.T) Store
	// reopen closes s and opens the storage again, as after a restart.
	reopen func(t *testing.T, s Store) Store
	// maxBatch is the most entries the store takes in one append (0: MaxBatchEntries); a store
	// with a lower limit refuses bigger batches with ErrInvalid.
	maxBatch int
}

// runConformance is the suite every Store implementation passes.
func runConformance(t *testing.T, h harness) {
	s := h.store(t)
	base := "test/" + testenv.UniqueName("c") + "/"
	ctx := context.Background()
	tests := []struct {
		name string
		fn   func(t *testing.T, s Store, stream string)
	}{
		{"AppendReadHead", testAppendReadHead},
		{"ConcurrentAppendsStayGapFree", testConcurrentAppends},
		{"StaleEpochIsRefused", testStaleEpoch},
		{"WritersRacingAcrossAnEpochChangeNeverInterleave", func(t *testing.T, s Store, stream string) {
			testEpochRace(t, s, h.peer(t), stream)
		}},
		{"RetriedBatchIsIdempotent", testRetry},
		{"BatchesOf1AndMax", func(t *testing.T, s Store, stream string) {
			testBatchSizes(t, s, stream, cmp.Or(h.maxBatch, MaxBatchEntries))
		}},
		{"FollowWhileAppending", testFollow},
		{"Trim", testTrim},
		{"BadInputChangesNothing", testBadInput},
		{"ListStreams", func(t *testing.T, s Store, stream string) { testList(t, s, stream) }},
		{"Fence", testFence},
		{"Reopen", func(t *testing.T, _ Store, stream string) {
			// Last: it closes and reopens the store.
			if err := s.Append(ctx, stream, 3, mkEntries(1, 100, 200)); err != nil {
				t.Fatal(err)
			}
			s = h.reopen(t, s)
			hd, err := s.Head(ctx, stream)
			if err != nil || hd.Seq != 100 || hd.Epoch != 3 {
				t.Fatalf("head after reopen: %+v, %v", hd, err)
			}
			checkStream(t, s, stream, 1, 100)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s, base+tc.name) })
	}
}

// mkEntries returns n entries from seq first with a payload of size bytes that names the seq.
func mkEntries(first uint64, n, size int) []Entry {
	es := make([]Entry, n)
	for i := range es {
		seq := first + uint64(i)
		payload := []byte(strings.Repeat(fmt.Sprintf("%d.", seq), size/2+1)[:size])
		es[i] = Entry{
			Seq: seq, Op: OpInsert, HLC: Timestamp{Wall: int64(seq), Logical: 1}, Origin: "a",
			Database: "db", Table: "t", Key: Row{{"id", Uint(seq)}},
			After: Row{{"id", Uint(seq)}, {"payload", Bytes(payload)}},
			Tx:    Tx{ID: fmt.Sprint("tx", seq), Count: 1, Last: true},
		}
	}
	return es
}

// checkStream reads from..to through a Reader and checks seqs, stream and payloads.
func checkStream(t *testing.T, s Store, stream string, from, to uint64) {
	t.Helper()
	r := NewReader(s, stream, from, 1000)
	for want := from; want <= to; want++ {
		e, ok, err := r.Next(context.Background())
		if err != nil || !ok {
			t.Fatalf("stream %s: entry %d: ok=%v err=%v", stream, want, ok, err)
		}
		if e.Seq != want || e.Stream != stream || e.Op != OpInsert || len(e.After) != 2 || e.After[0].Value.Uint != want {
			t.Fatalf("stream %s: entry %d is %+v", stream, want, e)
		}
	}
	if _, ok, err := r.Next(context.Background()); ok || err != nil {
		t.Fatalf("stream %s: more than %d entries (err %v)", stream, to, err)
	}
}

func mustHead(t *testing.T, s Store, stream string) Head {
	t.Helper()
	h, err := s.Head(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func testAppendReadHead(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	if h := mustHead(t, s, stream); h != (Head{}) {
		t.Fatalf("new stream head %+v", h)
	}
	if es, err := s.Read(ctx, stream, 1, 10); err != nil || len(es) != 0 {
		t.Fatalf("read of an empty stream: %v %v", es, err)
	}
	in := mkEntries(1, 3, 50)
	in[1].Before = Row{}
	in[2].Columns = []Column{{"id", "bigint"}}
	if err := s.Append(ctx, stream, 1, in); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, stream, 1, mkEntries(4, 2, 50)); err != nil {
		t.Fatal(err)
	}
	if h := mustHead(t, s, stream); h.Seq != 5 || h.Epoch != 1 || h.Low != 0 {
		t.Fatalf("head %+v, want seq 5 epoch 1", h)
	}
	es, err := s.Read(ctx, stream, 2, 2)
	if err != nil || len(es) != 2 || es[0].Seq != 2 || es[1].Seq != 3 {
		t.Fatalf("read 2..3: %v %v", es, err)
	}
	if es[0].Epoch != 1 || es[0].Before == nil || len(es[0].Before) != 0 || es[1].Columns[0].Type != "bigint" || es[0].Tx.ID != "tx2" {
		t.Errorf("entry fields not kept: %+v", es)
	}
	es, err = s.Read(ctx, stream, 5, 100)
	if err != nil || len(es) != 1 || es[0].Seq != 5 {
		t.Fatalf("read at head: %v %v", es, err)
	}
	if es, err := s.Read(ctx, stream, 6, 100); err != nil || len(es) != 0 {
		t.Fatalf("read past head: %v %v", es, err)
	}
}

// Many goroutines append one entry at a time at the head they read; losers of a race retry.
// The stream ends gap-free with every acknowledged entry exactly once.
func testConcurrentAppends(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	const writers, each = 8, 15
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < each; {
				h, err := s.Head(ctx, stream)
				if err != nil {
					errs <- err
					return
				}
				e := Entry{Seq: h.Seq + 1, Op: OpPut, Origin: fmt.Sprint(w), Source: Source{RequestID: fmt.Sprintf("%d-%d", w, k)}}
				switch err := s.Append(ctx, stream, 1, []Entry{e}); {
				case err == nil:
					k++
				case errors.Is(err, ErrConflict):
				default:
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	r := NewReader(s, stream, 1, 37)
	for want := uint64(1); want <= writers*each; want++ {
		e, ok, err := r.Next(ctx)
		if err != nil || !ok || e.Seq != want {
			t.Fatalf("entry %d: %+v ok=%v err=%v", want, e, ok, err)
		}
		if seen[e.Source.RequestID] {
			t.Fatalf("entry %s appears twice", e.Source.RequestID)
		}
		seen[e.Source.RequestID] = true
	}
	if len(seen) != writers*each || mustHead(t, s, stream).Seq != writers*each {
		t.Fatalf("%d distinct entries, head %d; want %d", len(seen), mustHead(t, s, stream).Seq, writers*each)
	}
}

func testStaleEpoch(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	if err := s.Append(ctx, stream, 5, mkEntries(1, 2, 10)); err != nil {
		t.Fatal(err)
	}
	err := s.Append(ctx, stream, 4, mkEntries(3, 1, 10))
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), stream) {
		t.Fatalf("append with an older epoch: %v, want ErrFenced naming the stream", err)
	}
	if h := mustHead(t, s, stream); h.Seq != 2 || h.Epoch != 5 {
		t.Fatalf("head after a refused append: %+v", h)
	}
	// A newer epoch fences the stream with its append; the old one is then refused.
	if err := s.Append(ctx, stream, 6, mkEntries(3, 1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, stream, 5, mkEntries(4, 1, 10)); !errors.Is(err, ErrFenced) {
		t.Fatalf("append after being fenced: %v", err)
	}
	es, err := s.Read(ctx, stream, 1, 10)
	if err != nil || len(es) != 3 || es[0].Epoch != 5 || es[2].Epoch != 6 {
		t.Fatalf("entries %+v, %v", es, err)
	}
}

// Writer A appends under epoch 1 until it is fenced; writer B (another handle, as another
// process) fences epoch 2 in the middle and appends. Every acknowledged append is in the stream,
// and no entry of A follows one of B.
func testEpochRace(t *testing.T, a, b Store, stream string) {
	ctx := context.Background()
	type ack struct {
		writer string
		seq    uint64
	}
	var mu sync.Mutex
	var acks []ack
	appendAt := func(s Store, epoch uint64, writer string) error {
		h, err := s.Head(ctx, stream)
		if err != nil {
			return err
		}
		e := Entry{Seq: h.Seq + 1, Op: OpPut, Origin: writer}
		err = s.Append(ctx, stream, epoch, []Entry{e})
		if err == nil {
			mu.Lock()
			acks = append(acks, ack{writer, e.Seq})
			mu.Unlock()
		}
		return err
	}
	countA := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acks)
	}
	aDone := make(chan error, 1)
	go func() {
		for {
			err := appendAt(a, 1, "A")
			switch {
			case errors.Is(err, ErrFenced):
				aDone <- nil
				return
			case err != nil && !errors.Is(err, ErrConflict):
				aDone <- err
				return
			}
		}
	}()
	testenv.WaitFor(t, 30*time.Second, "writer A to append 10 entries", func() bool { return countA() >= 10 })
	if _, err := b.Fence(ctx, stream, 2); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := appendAt(b, 2, "B"); err != nil && !errors.Is(err, ErrConflict) {
			t.Fatal(err)
		}
	}
	select {
	case err := <-aDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("writer A was never fenced")
	}
	h := mustHead(t, b, stream)
	es := readAll(t, b, stream, h.Seq)
	sawB := false
	for _, e := range es {
		switch {
		case e.Origin == "B" && e.Epoch == 2:
			sawB = true
		case e.Origin == "A" && e.Epoch == 1:
			if sawB {
				t.Fatalf("entry %d of A (epoch 1) after an entry of B", e.Seq)
			}
		default:
			t.Fatalf("entry %d: origin %s epoch %d", e.Seq, e.Origin, e.Epoch)
		}
	}
	for _, k := range acks {
		if k.seq > uint64(len(es)) || es[k.seq-1].Origin != k.writer {
			t.Fatalf("acknowledged append %s@%d is not in the stream", k.writer, k.seq)
		}
	}
}

func readAll(t *testing.T, s Store, stream string, head uint64) []Entry {
	t.Helper()
	var out []Entry
	r := NewReader(s, stream, 1, 500)
	for uint64(len(out)) < head {
		e, ok, err := r.Next(context.Background())
		if err != nil || !ok {
			t.Fatalf("stream %s: read %d of %d: ok=%v err=%v", stream, len(out), head, ok, err)
		}
		out = append(out, e)
	}
	return out
}

func testRetry(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	batch := mkEntries(1, 10, 100)
	for range 2 {
		if err := s.Append(ctx, stream, 1, batch); err != nil {
			t.Fatalf("append (or its retry): %v", err)
		}
	}
	if err := s.Append(ctx, stream, 1, batch[3:7]); err != nil {
		t.Fatalf("retry of part of a batch: %v", err)
	}
	changed := mkEntries(1, 10, 100)
	changed[4].Origin = "elsewhere"
	if err := s.Append(ctx, stream, 1, changed); !errors.Is(err, ErrConflict) {
		t.Fatalf("same seqs, other contents: %v, want ErrConflict", err)
	}
	if err := s.Append(ctx, stream, 1, mkEntries(12, 1, 10)); !errors.Is(err, ErrConflict) {
		t.Fatalf("batch leaving a gap after the head: %v, want ErrConflict", err)
	}
	if h := mustHead(t, s, stream); h.Seq != 10 {
		t.Fatalf("head %+v after retries", h)
	}
	checkStream(t, s, stream, 1, 10)
}

func testBatchSizes(t *testing.T, s Store, stream string, max int) {
	ctx := context.Background()
	if err := s.Append(ctx, stream, 1, mkEntries(1, 1, 200)); err != nil {
		t.Fatal(err)
	}
	if max < MaxBatchEntries {
		if err := s.Append(ctx, stream, 1, mkEntries(2, max+1, 200)); !errors.Is(err, ErrInvalid) {
			t.Fatalf("batch of %d entries (limit %d): %v, want ErrInvalid", max+1, max, err)
		}
	}
	if err := s.Append(ctx, stream, 1, mkEntries(2, max, 200)); err != nil {
		t.Fatal(err)
	}
	if h := mustHead(t, s, stream); h.Seq != uint64(max)+1 {
		t.Fatalf("head %+v", h)
	}
	checkStream(t, s, stream, 1, uint64(max)+1)
}

// A reader follows the stream while a writer appends batches of random sizes.
func testFollow(t *testing.T, s Store, stream string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const total = 600
	done := make(chan error, 1)
	go func() {
		next := uint64(1)
		for next <= total {
			n := min(1+rand.IntN(25), total-int(next)+1)
			if err := s.Append(ctx, stream, 1, mkEntries(next, n, 100)); err != nil {
				done <- err
				return
			}
			next += uint64(n)
		}
		done <- nil
	}()
	r := NewReader(s, stream, 1, 64)
	for want := uint64(1); want <= total; {
		e, ok, err := r.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			// Caught up with the writer: poll again (the feeds relay will wake readers instead).
			time.Sleep(time.Millisecond)
			continue
		}
		if e.Seq != want {
			t.Fatalf("reader got seq %d, want %d", e.Seq, want)
		}
		want++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func testTrim(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	for first := uint64(1); first <= 3000; first += 1000 {
		if err := s.Append(ctx, stream, 1, mkEntries(first, 1000, 50)); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetPosition(ctx, "applier-b", stream, 1000))
	must(s.SetPosition(ctx, "feeds", stream, 2500))
	if pos, ok, err := s.Position(ctx, "feeds", stream); err != nil || !ok || pos != 2500 {
		t.Fatalf("position: %d %v %v", pos, ok, err)
	}
	if _, ok, err := s.Position(ctx, "nobody", stream); err != nil || ok {
		t.Fatalf("position of an unknown consumer: %v %v", ok, err)
	}
	if err := s.Trim(ctx, stream, 2001); !errors.Is(err, ErrConsumerBehind) || !strings.Contains(err.Error(), "applier-b") {
		t.Fatalf("trim past a consumer: %v", err)
	}
	if h := mustHead(t, s, stream); h.Low != 0 {
		t.Fatalf("refused trim moved the trim point: %+v", h)
	}
	must(s.SetPosition(ctx, "applier-b", stream, 2000))
	must(s.Trim(ctx, stream, 2001))
	if h := mustHead(t, s, stream); h.Low != 2000 || h.Seq != 3000 {
		t.Fatalf("head after trim: %+v", h)
	}
	if _, err := s.Read(ctx, stream, 2000, 10); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("read of a trimmed entry: %v", err)
	}
	if _, err := s.Read(ctx, stream, 1, 10); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("read of a trimmed entry: %v", err)
	}
	checkStream(t, s, stream, 2001, 3000)
	must(s.Trim(ctx, stream, 1500)) // below the trim point: nothing to do
	if err := s.Trim(ctx, stream, 3002); !errors.Is(err, ErrInvalid) {
		t.Fatalf("trim past the head: %v", err)
	}
	must(s.Unregister(ctx, "feeds", stream))
	must(s.SetPosition(ctx, "applier-b", stream, 3000))
	must(s.Trim(ctx, stream, 3001))
	if es, err := s.Read(ctx, stream, 3001, 10); err != nil || len(es) != 0 {
		t.Fatalf("read after trimming everything: %v %v", es, err)
	}
	// Appends go on after a trim.
	must(s.Append(ctx, stream, 1, mkEntries(3001, 5, 50)))
	checkStream(t, s, stream, 3001, 3005)
}

func testBadInput(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	if err := s.Append(ctx, stream, 1, mkEntries(1, 3, 10)); err != nil {
		t.Fatal(err)
	}
	gap := mkEntries(4, 3, 10)
	gap[2].Seq = 9
	other := mkEntries(4, 1, 10)
	other[0].Stream = stream + "x"
	noOp := mkEntries(4, 1, 10)
	noOp[0].Op = OpInvalid
	huge := mkEntries(4, 1, 10)
	huge[0].After = Row{{"blob", Bytes(make([]byte, MaxEntryBytes))}}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"empty stream id", s.Append(ctx, "", 1, mkEntries(1, 1, 10))},
		{"stream id with a space", s.Append(ctx, "test/a b", 1, mkEntries(1, 1, 10))},
		{"stream id without class", s.Append(ctx, "/x", 1, mkEntries(1, 1, 10))},
		{"stream id too long", s.Append(ctx, "test/"+strings.Repeat("x", MaxStreamLen), 1, mkEntries(1, 1, 10))},
		{"epoch 0", s.Append(ctx, stream, 0, mkEntries(4, 1, 10))},
		{"empty batch", s.Append(ctx, stream, 1, nil)},
		{"seq gap in batch", s.Append(ctx, stream, 1, gap)},
		{"seq 0", s.Append(ctx, stream, 1, mkEntries(0, 1, 10))},
		{"entry of another stream", s.Append(ctx, stream, 1, other)},
		{"invalid op", s.Append(ctx, stream, 1, noOp)},
		{"oversized entry", s.Append(ctx, stream, 1, huge)},
		{"too many entries", s.Append(ctx, stream, 1, mkEntries(4, MaxBatchEntries+1, 1))},
		{"fence epoch 0", func() error { _, err := s.Fence(ctx, stream, 0); return err }()},
		{"read from 0", func() error { _, err := s.Read(ctx, stream, 0, 1); return err }()},
		{"read of 0", func() error { _, err := s.Read(ctx, stream, 1, 0); return err }()},
		{"read too many", func() error { _, err := s.Read(ctx, stream, 1, MaxReadEntries+1); return err }()},
		{"list limit 0", func() error { _, err := s.ListStreams(ctx, "test/", "", 0); return err }()},
		{"empty consumer", s.SetPosition(ctx, "", stream, 1)},
		{"trim past head", s.Trim(ctx, stream, 5)},
	} {
		if !errors.Is(tc.err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tc.name, tc.err)
		}
	}
	if h := mustHead(t, s, stream); h.Seq != 3 || h.Epoch != 1 || h.Low != 0 {
		t.Fatalf("bad input changed the stream: %+v", h)
	}
	checkStream(t, s, stream, 1, 3)
}

func testList(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	var want []string
	for i := range 23 {
		id := fmt.Sprintf("%s/s%03d", stream, i)
		want = append(want, id)
		if _, err := s.Fence(ctx, id, 1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Fence(ctx, stream+"-other/s", 1); err != nil {
		t.Fatal(err)
	}
	var got []string
	after := ""
	for {
		page, err := s.ListStreams(ctx, stream+"/", after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 10 {
			t.Fatalf("page of %d", len(page))
		}
		got = append(got, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	page, err := s.ListStreams(ctx, stream+"/s01", "", 100)
	if err != nil || !slices.Equal(page, want[10:20]) {
		t.Fatalf("sub-prefix: %v %v", page, err)
	}
}

func testFence(t *testing.T, s Store, stream string) {
	ctx := context.Background()
	h, err := s.Fence(ctx, stream, 5)
	if err != nil || h.Epoch != 5 || h.Seq != 0 {
		t.Fatalf("fence of a new stream: %+v %v", h, err)
	}
	if err := s.Append(ctx, stream, 5, mkEntries(1, 4, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fence(ctx, stream, 4); !errors.Is(err, ErrFenced) {
		t.Fatalf("fence to an older epoch: %v", err)
	}
	if h, err := s.Fence(ctx, stream, 5); err != nil || h.Seq != 4 || h.Epoch != 5 {
		t.Fatalf("fence to the same epoch: %+v %v", h, err)
	}
	h, err = s.Fence(ctx, stream, 7)
	if err != nil || h.Seq != 4 || h.Epoch != 7 {
		t.Fatalf("fence to a newer epoch: %+v %v", h, err)
	}
	if err := s.Append(ctx, stream, 5, mkEntries(5, 1, 10)); !errors.Is(err, ErrFenced) {
		t.Fatalf("append of the fenced writer: %v", err)
	}
	if err := s.Append(ctx, stream, 7, mkEntries(5, 1, 10)); err != nil {
		t.Fatalf("append of the new writer: %v", err)
	}
	checkStream(t, s, stream, 1, 5)
}
