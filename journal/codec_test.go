package journal

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func fullEntry() Entry {
	return Entry{
		Stream: "binlog/a/orders", Seq: 42, Epoch: 1 << 40, HLC: Timestamp{Wall: 1_700_000_000_123_456_789, Logical: 7},
		Origin: "irvine", Source: Source{GTID: "1-1-42", File: "mysql-bin.000003", Pos: 1234, RequestID: "req-9", Position: "1-1-42,2-2-7"},
		Tx: Tx{ID: "1-1-42", Index: 2, Count: 3, Last: true}, Op: OpUpdate, Database: "shop", Table: "orders",
		Key: Row{{"id", Int(-5)}},
		Before: Row{
			{"id", Int(-5)}, {"qty", Uint(math.MaxUint64)}, {"price", Decimal("-123456789012345678901234567890.123456")},
			{"f32", Value{Kind: KindFloat32, Float: float64(float32(1.5))}}, {"f64", Float64(math.Inf(-1))},
			{"name", String("ünïcode ✓")}, {"blob", Bytes([]byte{0, 1, 2, 255})}, {"flag", Bool(true)},
			{"at", Value{Kind: KindTemporal, Str: "2024-02-29 23:59:59.999999"}}, {"doc", Value{Kind: KindJSON, Str: `{"a":[1,2]}`}},
			{"gone", Null()}, {"empty", Bytes([]byte{})},
		},
		After:         Row{},
		SchemaVersion: 9, Statement: "ALTER TABLE orders ADD COLUMN note TEXT",
		Columns: []Column{{"id", "bigint"}, {"note", "text"}},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, e := range []Entry{fullEntry(), {Op: OpMark}, {Stream: "k/x", Seq: 1, Op: OpDelete, Before: Row{{"k", String("")}}}} {
		got, err := DecodeEntry(Encode(&e))
		if err != nil {
			t.Fatal(err)
		}
		// Empty byte slices decode as empty (not nil) slices; compare values with Equal.
		if !entriesEqual(got, e) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, e)
		}
	}
	e := fullEntry()
	if got, _ := DecodeEntry(Encode(&e)); got.After == nil || len(got.After) != 0 || got.Key == nil {
		t.Errorf("present empty row lost: after=%#v", got.After)
	}
	e.After = nil
	if got, _ := DecodeEntry(Encode(&e)); got.After != nil {
		t.Errorf("absent row decoded as present: %#v", got.After)
	}
}

// entriesEqual compares entries, values by Value.Equal.
func entriesEqual(a, b Entry) bool {
	rows := [][2]Row{{a.Key, b.Key}, {a.Before, b.Before}, {a.After, b.After}}
	a.Key, a.Before, a.After, b.Key, b.Before, b.After = nil, nil, nil, nil, nil, nil
	if !reflect.DeepEqual(a, b) {
		return false
	}
	for _, r := range rows {
		if (r[0] == nil) != (r[1] == nil) || len(r[0]) != len(r[1]) {
			return false
		}
		for i := range r[0] {
			if r[0][i].Name != r[1][i].Name || !r[0][i].Value.Equal(r[1][i].Value) {
				return false
			}
		}
	}
	return true
}

// A reader skips fields it does not know: a newer writer may add some.
func TestDecodeSkipsUnknownFields(t *testing.T) {
	e := Entry{Stream: "k/x", Seq: 3, Op: OpPut}
	b := Encode(&e)
	b = append(b, 0xf8, 0x07, 0x01)           // field 127, varint 1
	b = append(b, 0x82, 0x08, 0x02, 'h', 'i') // field 128, bytes "hi"
	got, err := DecodeEntry(b)
	if err != nil || got.Seq != 3 || got.Stream != "k/x" {
		t.Fatalf("with unknown fields: %+v %v", got, err)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	e := fullEntry()
	good := Encode(&e)
	for name, b := range map[string][]byte{
		"empty":        nil,
		"version 2":    append([]byte{2}, good[1:]...),
		"truncated":    good[:len(good)-3],
		"unknown op":   append([]byte{1}, 0x78, 99), // field 15 = 99
		"unknown kind": append([]byte{1}, 0x9a, 0x01, 0x04, 0x0a, 0x02, 0x10, 0x63),
	} {
		if _, err := DecodeEntry(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestEncodingIsCompact(t *testing.T) {
	e := Entry{Stream: "binlog/a/shop", Seq: 1000, Epoch: 3, HLC: Timestamp{Wall: 1_700_000_000_000_000_000}, Op: OpInsert,
		Database: "shop", Table: "orders", After: Row{{"id", Int(1000)}, {"qty", Int(3)}}}
	if n := len(Encode(&e)); n > 96 { // JSON of the same entry is about 250 bytes
		t.Errorf("small insert encodes to %d bytes", n)
	}
}

// FuzzDecodeEntry: decoding never panics, and whatever decodes re-encodes to the same entry.
func FuzzDecodeEntry(f *testing.F) {
	e := fullEntry()
	f.Add(Encode(&e))
	f.Add([]byte{1})
	f.Add([]byte{1, 0x9a, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err != nil {
			return
		}
		again, err := DecodeEntry(Encode(&e))
		if err != nil || !entriesEqual(again, e) {
			t.Fatalf("re-encoding changed the entry: %v\n%+v\n%+v", err, e, again)
		}
		d := newDecoder() // as Read decodes: names shared with the entries before
		full := fullEntry()
		if _, err := d.decode(Encode(&full)); err != nil {
			t.Fatal(err)
		}
		if shared, err := d.decode(b); err != nil || !entriesEqual(shared, e) {
			t.Fatalf("a shared decoder decodes differently: %v\n%+v\n%+v", err, e, shared)
		}
	})
}

// A decoder shared by the entries of a Read decodes each as DecodeEntry does, also past the
// number of names it keeps.
func TestDecoderSharesNames(t *testing.T) {
	var es []Entry
	for i := 0; i < 3*maxInternNames; i++ {
		e := fullEntry()
		e.Seq = uint64(i + 1)
		e.Table = fmt.Sprint("t", i%(2*maxInternNames))
		e.Before = append(e.Before, Field{fmt.Sprint("c", i), Int(int64(i))})
		es = append(es, e, Entry{Stream: e.Stream, Seq: uint64(i + 1), Op: OpMark})
	}
	d := newDecoder()
	for i := range es {
		want, err := DecodeEntry(Encode(&es[i]))
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.decode(Encode(&es[i]))
		if err != nil || !entriesEqual(got, want) || !entriesEqual(got, es[i]) {
			t.Fatalf("entry %d: %v\n got %+v\nwant %+v", i, err, got, want)
		}
	}
	if len(d.names) > maxInternNames {
		t.Errorf("decoder keeps %d names, at most %d", len(d.names), maxInternNames)
	}
}

// referenceEncode is the straightforward encoding, each nested message built in a buffer of its
// own: AppendEncoded, which writes nested messages in place, must produce the same bytes.
func referenceEncode(e *Entry) []byte {
	str := func(b []byte, num protowire.Number, s string) []byte {
		if s == "" {
			return b
		}
		return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
	}
	uint := func(b []byte, num protowire.Number, v uint64) []byte {
		if v == 0 {
			return b
		}
		return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
	}
	row := func(b []byte, num protowire.Number, r Row) []byte {
		if r == nil {
			return b
		}
		var m []byte
		for _, f := range r {
			var fm []byte
			fm = str(fm, fFieldName, f.Name)
			fm = uint(fm, fFieldKind, uint64(f.Value.Kind))
			v := f.Value
			switch v.Kind {
			case KindInt:
				fm = uint(fm, fFieldInt, protowire.EncodeZigZag(v.Int))
			case KindUint, KindBool:
				fm = uint(fm, fFieldUint, v.Uint)
			case KindFloat32, KindFloat64:
				fm = protowire.AppendFixed64(protowire.AppendTag(fm, fFieldFloat, protowire.Fixed64Type), math.Float64bits(v.Float))
			case KindBytes:
				fm = protowire.AppendBytes(protowire.AppendTag(fm, fFieldBytes, protowire.BytesType), v.Bytes)
			case KindNull:
			default:
				fm = str(fm, fFieldStr, v.Str)
			}
			m = protowire.AppendBytes(protowire.AppendTag(m, fRowField, protowire.BytesType), fm)
		}
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), m)
	}
	b := []byte{encodingVersion}
	b = str(b, fStream, e.Stream)
	b = uint(b, fSeq, e.Seq)
	b = uint(b, fEpoch, e.Epoch)
	b = uint(b, fHLCWall, uint64(e.HLC.Wall))
	b = uint(b, fHLCLogical, uint64(e.HLC.Logical))
	b = str(b, fOrigin, e.Origin)
	b = str(b, fGTID, e.Source.GTID)
	b = str(b, fFile, e.Source.File)
	b = uint(b, fPos, e.Source.Pos)
	b = str(b, fRequestID, e.Source.RequestID)
	b = str(b, fPosition, e.Source.Position)
	b = str(b, fTxID, e.Tx.ID)
	b = uint(b, fTxIndex, uint64(e.Tx.Index))
	b = uint(b, fTxCount, uint64(e.Tx.Count))
	if e.Tx.Last {
		b = uint(b, fTxLast, 1)
	}
	b = uint(b, fOp, uint64(e.Op))
	b = str(b, fDatabase, e.Database)
	b = str(b, fTable, e.Table)
	b = row(b, fKey, e.Key)
	b = row(b, fBefore, e.Before)
	b = row(b, fAfter, e.After)
	b = uint(b, fSchemaVersion, e.SchemaVersion)
	b = str(b, fStatement, e.Statement)
	for _, c := range e.Columns {
		var m []byte
		m = str(m, fColName, c.Name)
		m = str(m, fColType, c.Type)
		b = protowire.AppendBytes(protowire.AppendTag(b, fColumn, protowire.BytesType), m)
	}
	return b
}

// The in-place encoding is byte for byte the reference one, and EncodedSize its exact length,
// for entries of every shape (long strings and rows, whose lengths take several varint bytes).
func TestEncodeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string { return strings.Repeat("x", []int{0, 1, 127, 128, 300, 20000}[rng.IntN(6)]) }
	value := func() Value {
		switch rng.IntN(11) {
		case 0:
			return Null()
		case 1:
			return Int([]int64{0, -1, 1, math.MinInt64, math.MaxInt64}[rng.IntN(5)])
		case 2:
			return Uint([]uint64{0, 1, 300, math.MaxUint64}[rng.IntN(4)])
		case 3:
			return Value{Kind: KindFloat32, Float: float64(rng.Float32())}
		case 4:
			return Float64([]float64{0, math.Inf(1), math.NaN(), rng.Float64()}[rng.IntN(4)])
		case 5:
			return Decimal(str())
		case 6:
			return String(str())
		case 7:
			return Bytes([]byte(str()))
		case 8:
			return Bool(rng.IntN(2) == 0)
		case 9:
			return Value{Kind: KindTemporal, Str: str()}
		default:
			return Value{Kind: KindJSON, Str: str()}
		}
	}
	row := func() Row {
		if rng.IntN(4) == 0 {
			return nil
		}
		r := Row{}
		for range rng.IntN(12) {
			r = append(r, Field{Name: str(), Value: value()})
		}
		return r
	}
	entries := []Entry{fullEntry(), {}, {Op: OpMark}}
	for range 2000 {
		e := Entry{Stream: str(), Seq: rng.Uint64(), Epoch: rng.Uint64N(3), HLC: Timestamp{Wall: rng.Int64(), Logical: rng.Uint32N(2)},
			Origin: str(), Source: Source{GTID: str(), File: str(), Pos: rng.Uint64N(1 << 40), RequestID: str(), Position: str()},
			Tx: Tx{ID: str(), Index: rng.Uint32(), Count: rng.Uint32N(2), Last: rng.IntN(2) == 0}, Op: Op(rng.IntN(7)),
			Database: str(), Table: str(), Key: row(), Before: row(), After: row(), SchemaVersion: rng.Uint64N(2), Statement: str()}
		for range rng.IntN(3) {
			e.Columns = append(e.Columns, Column{Name: str(), Type: str()})
		}
		entries = append(entries, e)
	}
	for i := range entries {
		want := referenceEncode(&entries[i])
		if got := Encode(&entries[i]); !bytes.Equal(got, want) {
			t.Fatalf("entry %d: encoding differs from the reference", i)
		}
		if n := EncodedSize(&entries[i]); n != len(want) {
			t.Fatalf("entry %d: EncodedSize %d, encoding of %d bytes", i, n, len(want))
		}
		if got := AppendEncoded([]byte("prefix"), &entries[i]); !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Fatalf("entry %d: AppendEncoded after a prefix differs", i)
		}
	}
}

// BenchmarkEncode encodes a captured insert of four columns, as the binlog capture journals it.
func BenchmarkEncode(b *testing.B) {
	row := Row{{"id", Int(12345)}, {"tx", Int(123)}, {"k", Int(45)}, {"payload", String(strings.Repeat("p", 80))}}
	e := Entry{Stream: "binlog/a/bench", Seq: 123456, Epoch: 1, HLC: Timestamp{Wall: 1_700_000_000_123_456_789, Logical: 3}, Origin: "a",
		Source: Source{GTID: "0-1-12345", File: "mysql-bin.000003", Pos: 123456}, Tx: Tx{ID: "0-1-12345", Index: 45, Count: 100},
		Op: OpInsert, Database: "bench_abcdef", Table: "t", Key: row[:1:1], After: row, SchemaVersion: 0x1234567890abcdef}
	buf := make([]byte, 0, 4096)
	b.SetBytes(int64(EncodedSize(&e)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEncoded(buf[:0], &e)
	}
}

// SQLArg binds each kind as what stores exactly that value; empty bytes are not NULL.
func TestSQLArg(t *testing.T) {
	for _, c := range []struct {
		v    Value
		want any
	}{
		{Null(), nil},
		{Int(-5), int64(-5)},
		{Uint(18446744073709551615), uint64(18446744073709551615)},
		{Bool(true), uint64(1)},
		{Value{Kind: KindFloat32, Float: 1.5}, float32(1.5)},
		{Float64(-2.5), -2.5},
		{Decimal("0.10"), "0.10"},
		{String("ünï"), "ünï"},
		{Value{Kind: KindTemporal, Str: "2024-02-29"}, "2024-02-29"},
	} {
		if got := c.v.SQLArg(); got != c.want {
			t.Errorf("%+v: %#v, want %#v", c.v, got, c.want)
		}
	}
	if b, ok := Bytes(nil).SQLArg().([]byte); !ok || b == nil || len(b) != 0 {
		t.Errorf("empty bytes: %#v, want []byte{}", Bytes(nil).SQLArg())
	}
	if b, ok := Bytes([]byte{0, 1}).SQLArg().([]byte); !ok || len(b) != 2 {
		t.Errorf("bytes: %#v", Bytes([]byte{0, 1}).SQLArg())
	}
}

// TestRowSizeBound: the bound holds for every kind of value at its widest (the longest varints,
// lengths of several bytes), and is tight enough to be useful: within the overhead of each field.
func TestRowSizeBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	values := func(data int) []Value {
		s := strings.Repeat("é", data/2)
		return []Value{Null(), Int(math.MinInt64), Int(-1), Int(math.MaxInt64), Uint(math.MaxUint64), Uint(1),
			{Kind: KindBool, Uint: 1}, {Kind: KindFloat32, Float: 1.5}, Float64(math.Inf(-1)), String(s),
			{Kind: KindDecimal, Str: s}, Bytes([]byte(s)), Bytes([]byte{})}
	}
	for round := range 2000 {
		var r Row
		names, data := 0, 0
		for range rng.IntN(12) {
			size := []int{0, 1, 127, 128, 300, 20000, 1 << 17}[rng.IntN(7)]
			vs := values(size)
			f := Field{Name: strings.Repeat("n", rng.IntN(3)*70), Value: vs[rng.IntN(len(vs))]}
			names += len(f.Name)
			data += len(f.Value.Str) + len(f.Value.Bytes)
			r = append(r, f)
		}
		if r == nil {
			r = Row{}
		}
		got, bound := len(appendRow(nil, fAfter, r)), RowSizeBound(len(r), names, data)
		if got > bound {
			t.Fatalf("round %d: row of %d fields encodes to %d bytes, over its bound %d", round, len(r), got, bound)
		}
		if bound > got+25*len(r)+6 {
			t.Fatalf("round %d: bound %d is loose for %d bytes", round, bound, got)
		}
	}
}
