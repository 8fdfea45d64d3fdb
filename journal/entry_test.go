package journal

import (
	"bytes"
	"testing"
)

func TestAppendCanonical(t *testing.T) {
	same := [][2]Value{{Int(7), Uint(7)}, {Bool(true), Uint(1)}, {String("a"), Decimal("a")}}
	for _, p := range same {
		if !bytes.Equal(p[0].AppendCanonical(nil), p[1].AppendCanonical(nil)) {
			t.Errorf("%+v and %+v differ", p[0], p[1])
		}
	}
	differ := [][2]Value{{Int(-7), Uint(7)}, {Float64(1.5), Float64(2.5)}, {String("ab"), Bytes([]byte("ab"))}, {Null(), String("")}, {Int(7), String("7")}}
	for _, p := range differ {
		if bytes.Equal(p[0].AppendCanonical(nil), p[1].AppendCanonical(nil)) {
			t.Errorf("%+v and %+v encode alike", p[0], p[1])
		}
	}
	// Tag, 8-byte length, payload; appended after what is there.
	if got := Int(-12).AppendCanonical([]byte("x")); !bytes.Equal(got, []byte("xi\x00\x00\x00\x00\x00\x00\x00\x03-12")) {
		t.Errorf("Int(-12) = %q", got)
	}
}
