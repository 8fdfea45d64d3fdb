package binlog

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

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
