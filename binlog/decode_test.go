package binlog

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/musicd/musicd/journal"
)

// referenceText is the plain decoding of character data (see text): text and textString must give
// the same values, with and without their ASCII fast paths.
func referenceText(raw []byte, collation uint64) journal.Value {
	switch {
	case collation == binaryCollation:
		return journal.Bytes(raw)
	case latin1Collations[collation]:
		var b strings.Builder
		for _, c := range raw {
			b.WriteRune(cp1252(c))
		}
		return journal.String(b.String())
	case utf8.Valid(raw):
		return journal.String(string(raw))
	default:
		return journal.Bytes(raw)
	}
}

func TestTextMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	inputs := [][]byte{nil, {}, []byte("plain ascii"), []byte("ünïcode ✓"), {0x80, 0x9f, 0xff}, []byte("abc\xe9"), {0xc3}}
	for range 5000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = byte(rng.IntN(256))
			} else {
				b[i] = byte(0x20 + rng.IntN(0x5f))
			}
		}
		inputs = append(inputs, b)
	}
	for _, raw := range inputs {
		for _, coll := range []uint64{binaryCollation, 8, 47, 33, 45, 46, 224, 11} { // binary, latin1, utf8mb3/mb4, ascii
			want := referenceText(append([]byte{}, raw...), coll)
			for name, got := range map[string]journal.Value{"text": text(raw, coll), "textString": textString(string(raw), coll)} {
				if !got.Equal(want) {
					t.Fatalf("%s(%q, %d) = %#v, want %#v", name, raw, coll, got, want)
				}
			}
		}
	}
	// The values are copies: go-mysql's buffer may be reused.
	raw := []byte("copy me")
	for _, coll := range []uint64{binaryCollation, 8, 45} {
		v := text(raw, coll)
		raw[0] = 'C'
		if v.Str == "Copy me" || string(v.Bytes) == "Copy me" {
			t.Errorf("collation %d: value shares the input", coll)
		}
		raw[0] = 'c'
	}
}

// rowKey's key holds the primary key columns in key order, whether or not they are the row's
// first columns (then the key is the start of the row); unsigned integers decoded as signed come
// back unsigned; and neither row nor key can be changed through the other by appending.
func TestRowKey(t *testing.T) {
	schema := func(pk ...int) *tableSchema {
		return &tableSchema{database: "db", table: "t", names: []string{"a", "b", "c"},
			types:    []byte{mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_INT24, mysql.MYSQL_TYPE_VARCHAR},
			meta:     []uint16{0, 0, 400},
			unsigned: map[int]bool{1: true}, collation: map[int]uint64{2: 45},
			pk: pk, pkPrefix: isPrefix(pk)}
	}
	// b is MEDIUMINT UNSIGNED 16777215, as go-mysql decodes it without the signedness: -1.
	values := []any{int32(-7), int32(-1), "x"}
	for _, tc := range []struct {
		pk     []int
		prefix bool
		want   []string
	}{
		{[]int{0}, true, []string{"a"}},
		{[]int{0, 1}, true, []string{"a", "b"}},
		{[]int{2}, false, []string{"c"}},
		{[]int{1, 0}, false, []string{"b", "a"}},
		{nil, true, nil},
	} {
		s := schema(tc.pk...)
		if s.pkPrefix != tc.prefix {
			t.Errorf("pk %v: prefix %v, want %v", tc.pk, s.pkPrefix, tc.prefix)
		}
		var slab fieldSlab
		r, k, err := s.rowKey(values, true, &slab)
		if err != nil {
			t.Fatal(err)
		}
		want := journal.Row{{Name: "a", Value: journal.Int(-7)}, {Name: "b", Value: journal.Uint(16777215)}, {Name: "c", Value: journal.String("x")}}
		checkRow := func(r journal.Row) {
			t.Helper()
			if len(r) != len(want) {
				t.Fatalf("pk %v: row %v", tc.pk, r)
			}
			for i := range want {
				if r[i].Name != want[i].Name || !r[i].Value.Equal(want[i].Value) {
					t.Errorf("pk %v: row field %d is %+v, want %+v", tc.pk, i, r[i], want[i])
				}
			}
		}
		checkRow(r)
		var names []string
		for _, f := range k {
			names = append(names, f.Name)
		}
		if strings.Join(names, ",") != strings.Join(tc.want, ",") || (len(tc.want) == 0) != (k == nil) {
			t.Errorf("pk %v: key %v, want %v", tc.pk, k, tc.want)
		}
		next, _, err := s.rowKey(values, true, &slab) // the next row, from the same slab
		if err != nil {
			t.Fatal(err)
		}
		_ = append(k, journal.Field{Name: "extra"})
		_ = append(r, journal.Field{Name: "extra"})
		checkRow(r)
		checkRow(next)
		if _, k, _ := s.rowKey(values, false, &slab); k != nil {
			t.Errorf("pk %v: key %v without withKey", tc.pk, k)
		}
	}
}
