package journal

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"
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
