package journal

import (
	"bytes"
	"fmt"
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

func TestRowMap(t *testing.T) {
	r := Row{
		{Name: "i", Value: Int(-5)}, {Name: "big", Value: Int(1 << 60)}, {Name: "u", Value: Uint(1<<64 - 1)},
		{Name: "s", Value: String("é")}, {Name: "txt", Value: Bytes([]byte("abc"))}, {Name: "bin", Value: Bytes([]byte{0xff, 0})},
		{Name: "d", Value: Decimal("1.50")}, {Name: "n", Value: Null()},
	}
	got := fmt.Sprint(r.Map())
	want := "map[big:1152921504606846976 bin:0xff00 d:1.50 i:-5 n:<nil> s:é txt:abc u:18446744073709551615]"
	if got != want {
		t.Errorf("Map() = %s, want %s", got, want)
	}
	for _, k := range []string{"big", "u", "bin"} {
		if _, ok := r.Map()[k].(string); !ok {
			t.Errorf("%s: %T, want text", k, r.Map()[k])
		}
	}
	if Row(nil).Map() != nil {
		t.Error("a nil row maps to a non-nil map")
	}
}
