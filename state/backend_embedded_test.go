package state

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/musicd/musicd/journal"
)

func bkDiscardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func bkOpenTestEmbedded(t *testing.T, dir string) *EmbeddedBackend {
	t.Helper()
	b, err := OpenEmbeddedBackend(dir, bkDiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEmbeddedBackend(t *testing.T) {
	runBackendConformance(t, func(t *testing.T) Backend {
		b := bkOpenTestEmbedded(t, t.TempDir())
		t.Cleanup(func() {
			if err := b.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return b
	})
}

// Schema, rows and tombstones survive a reopen; a table created again under a dropped table's
// name starts empty, even after a reopen.
func TestEmbeddedBackendReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := bkOpenTestEmbedded(t, dir)
	if err := b.CreateKeyspace(ctx, Keyspace{Name: "ks", Replication: map[string]int{"dc1": 2}}); err != nil {
		t.Fatal(err)
	}
	tbl := bkMustCreateTable(t, b, bkSimpleTable("ks", "t"))
	other := bkMustCreateTable(t, b, bkSimpleTable("ks", "other"))
	k1, k2 := bkRow("id", journal.String("k1")), bkRow("id", journal.String("k2"))
	bkMustApply(t, b, tbl, bkPut(k1, 10, bkRow("a", journal.String("x"))), bkPut(k2, 10, bkRow("b", journal.Int(2))), bkDel(k2, 20))
	bkMustApply(t, b, other, bkPut(k1, 10, nil))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = bkOpenTestEmbedded(t, dir)
	if ks, err := b.Keyspace(ctx, "ks"); err != nil || ks.Replication["dc1"] != 2 {
		t.Fatalf("Keyspace after reopen: %+v, %v", ks, err)
	}
	if ts, err := b.Tables(ctx, "ks"); err != nil || len(ts) != 2 || !sameTable(ts[1], tbl) {
		t.Fatalf("Tables after reopen: %+v, %v", ts, err)
	}
	bkMustGet(t, b, tbl, k1, 10, bkRow("a", journal.String("x")))
	bkMustBeAbsent(t, b, tbl, k2)
	bkMustApply(t, b, tbl, bkPut(k2, 15, bkRow("a", journal.String("late")))) // older than the deletion
	bkMustBeAbsent(t, b, tbl, k2)

	if err := b.DropTable(ctx, "ks", "t"); err != nil {
		t.Fatal(err)
	}
	bkMustCreateTable(t, b, tbl)
	bkMustBeAbsent(t, b, tbl, k1)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = bkOpenTestEmbedded(t, dir)
	defer b.Close()
	bkMustBeAbsent(t, b, tbl, k1)
	bkMustGet(t, b, other, k1, 10, nil)
	// Another definition under the same name is another table.
	changed := bkSimpleTable("ks", "t")
	changed.Columns = append(changed.Columns, Column{"c", Text})
	if _, _, err := b.Get(ctx, changed, LevelLocal, k1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get with a stale definition: %v, want ErrNotFound", err)
	}
	if err := b.DropKeyspace(ctx, "ks"); err != nil {
		t.Fatal(err)
	}
	// No row of the dropped keyspace remains.
	it, err := b.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if it.Key()[0] != 'N' {
			t.Errorf("key %q left after DropKeyspace", it.Key())
		}
	}
}

// The key encoding orders values like CompareValues, column after column.
func TestBackendKeyEncodingOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randString := func() string {
		alphabet := []string{"", "a", "b", "\x00", "\x00\xff", "\xff", "é", "ab", "a\x00"}
		var sb strings.Builder
		for range rng.IntN(4) {
			sb.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return sb.String()
	}
	decimals := []string{"0", "-0", "0.00", "1", "1.0", "1.5", "1.50", "10", "9.99", "-1", "-1.5", "-10", "-0.001",
		"0.001", "0.0011", "100", "99", "-99", "-100", "123456789012345678901234567890.5", "-0.1", "0.1", "0.09"}
	floats := []float64{math.Inf(-1), -math.MaxFloat64, -1.5, -1, -math.SmallestNonzeroFloat64, 0, math.SmallestNonzeroFloat64, 0.5, 1, math.MaxFloat64, math.Inf(1)}
	gen := map[Type]func() journal.Value{
		Int: func() journal.Value { return journal.Int(int64(int32(rng.Uint32()))) },
		Bigint: func() journal.Value {
			return journal.Int([]int64{math.MinInt64, -1, 0, 1, math.MaxInt64, rng.Int64() - math.MaxInt64/2}[rng.IntN(6)])
		},
		Double:  func() journal.Value { return journal.Float64(floats[rng.IntN(len(floats))]) },
		Boolean: func() journal.Value { return journal.Bool(rng.IntN(2) == 0) },
		Text:    func() journal.Value { return journal.String(randString()) },
		Blob:    func() journal.Value { return journal.Bytes([]byte(randString())) },
		Decimal: func() journal.Value { return journal.Decimal(decimals[rng.IntN(len(decimals))]) },
	}
	sign := func(n int) int { return max(-1, min(1, n)) }
	for typ, g := range gen {
		for range 2000 {
			a, b := g(), g()
			a2, b2 := g(), g()
			if typ == Decimal { // stored normalized, as the backends do
				a, _ = bkNormalize(Column{"c", Decimal}, a)
				b, _ = bkNormalize(Column{"c", Decimal}, b)
			}
			want := CompareValues(a, b)
			got := sign(bytes.Compare(bkAppendKey(nil, typ, a), bkAppendKey(nil, typ, b)))
			if got != want {
				t.Fatalf("%s: %s vs %s: encodings compare %d, values %d", typ, bkShowValue(a), bkShowValue(b), got, want)
			}
			// Pairs: the first column decides, then the second.
			pa := bkAppendKey(bkAppendKey(nil, typ, a), typ, a2)
			pb := bkAppendKey(bkAppendKey(nil, typ, b), typ, b2)
			wantPair := want
			if wantPair == 0 {
				wantPair = CompareValues(a2, b2)
			}
			if typ == Decimal && want == 0 {
				continue // a2, b2 not normalized
			}
			if got := sign(bytes.Compare(pa, pb)); got != wantPair {
				t.Fatalf("%s: (%s, %s) vs (%s, %s): encodings compare %d, values %d", typ, bkShowValue(a), bkShowValue(a2), bkShowValue(b), bkShowValue(b2), got, wantPair)
			}
		}
	}
}

func TestBackendValueEncodingRoundTrip(t *testing.T) {
	for _, v := range []journal.Value{
		journal.Null(), journal.Int(math.MinInt64), journal.Bool(true), journal.Float64(-0.5),
		bkFloat32v(1.25), journal.Bytes([]byte{}), journal.Bytes([]byte{0, 1}), journal.String("héllo"),
		journal.Decimal("-1.50"), bkTemporal("2026-01-01T00:00:00.000Z"),
	} {
		b := bkAppendValue([]byte("x"), v)
		got, rest, err := bkReadValue(b[1:])
		if err != nil || len(rest) != 0 || !bkSameValue(got, v) {
			t.Errorf("%s: got %s, rest %d, %v", bkShowValue(v), bkShowValue(got), len(rest), err)
		}
		for i := 1; i < len(b)-1; i++ { // every truncation is an error, never a panic
			if _, _, err := bkReadValue(b[1:i]); err == nil {
				t.Errorf("%s truncated to %d bytes: no error", bkShowValue(v), i-1)
			}
		}
	}
	if _, _, err := bkReadValue([]byte{200}); err == nil {
		t.Error("unknown kind: no error")
	}
	// Records: a corrupt record is an error.
	bt, err := newBkTable(bkSimpleTable("ks", "t"))
	if err != nil {
		t.Fatal(err)
	}
	r := &embRecord{cells: make([]embCell, len(bt.regCol)+1)}
	m, err := bt.checkMutation(bkPut(bkRow("id", journal.String("k")), 5, bkRow("a", journal.String("x"))))
	if err != nil {
		t.Fatal(err)
	}
	r.apply(m)
	enc := r.encode(bt)
	back, err := decodeEmbRecord(bt, enc)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := back.stored(bt); !ok || got.Version != 5 || got.Values[1].Value.Str != "x" {
		t.Errorf("record round trip: %+v %v", got, ok)
	}
	for i := range len(enc) - 1 { // a record cut inside its key values or a cell
		if _, err := decodeEmbRecord(bt, enc[:i]); err == nil && i < 4 {
			t.Errorf("record truncated to %d bytes: no error", i)
		}
	}
	if _, err := decodeEmbRecord(bt, []byte{9, 0}); err == nil {
		t.Error("unknown record version: no error")
	}
}

// Page tokens are outside bytes. Any token and any position payload decode to a key of the
// table's key types or to errBadToken, never a panic; a decoded key encodes back to itself.
func FuzzBackendPageToken(f *testing.F) {
	bt, err := newBkTable(Table{
		Keyspace: "ks",
		Name:     "t",
		Columns: []Column{{"id", Text}, {"i", Int}, {"big", Bigint}, {"d", Double}, {"f", Float}, {"ok", Boolean},
			{"bl", Blob}, {"ts", Timestamp}, {"u", UUID}, {"dec", Decimal}, {"v", Text}},
		PartitionKey: []string{"id", "i"},
		Clustering:   []string{"big", "d", "f", "ok", "bl", "ts", "u", "dec"},
	})
	if err != nil {
		f.Fatal(err)
	}
	valid := []journal.Value{journal.String("k"), journal.Int(-3), journal.Int(1 << 40), journal.Float64(-0.5),
		bkFloat32v(1.25), journal.Bool(true), journal.Bytes([]byte{0, 1}), bkTemporal("2026-01-01T00:00:00.000Z"),
		journal.String("123e4567-e89b-12d3-a456-426614174000"), journal.Decimal("-1.50")}
	f.Add(bt.appendKeyRecord(nil, valid), bkEncodeToken(7, bt.appendKeyRecord(nil, valid)))
	f.Add([]byte{}, "")
	f.Add([]byte{byte(journal.KindString), 0xff, 0xff}, "AQAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, payload []byte, token string) {
		if got, err := bkDecodeToken(bkEncodeToken(7, payload), 7); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("token round trip: %x, %v", got, err)
		}
		if p, err := bkDecodeToken(token, 7); err == nil {
			payload = p
		} else if !errors.Is(err, errBadToken) {
			t.Fatalf("decode token %q: %v", token, err)
		}
		key, err := bt.readKeyRecord(payload)
		if err != nil {
			if !errors.Is(err, errBadToken) {
				t.Fatalf("decode %x: %v", payload, err)
			}
			return
		}
		again, err := bt.readKeyRecord(bt.appendKeyRecord(nil, key))
		if err != nil || len(again) != len(key) {
			t.Fatalf("decode %x: re-encoded key: %v", payload, err)
		}
		for i := range key {
			if !bkSameValue(again[i], key[i]) {
				t.Fatalf("decode %x: column %d: %s, then %s", payload, i, bkShowValue(key[i]), bkShowValue(again[i]))
			}
		}
	})
}
