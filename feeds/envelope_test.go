package feeds

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/musicd/musicd/journal"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fullEntry is an entry with every field set: an update captured from a binlog.
func fullEntry() journal.Entry {
	return journal.Entry{
		Stream: "binlog/a/orders-db", Seq: 42, Epoch: 7,
		HLC:    journal.Timestamp{Wall: 1_700_000_000_123_456_789, Logical: 3},
		Origin: "irvine",
		Source: journal.Source{GTID: "1-1-9001", File: "mariadb-bin.000003", Pos: 123456},
		Tx:     journal.Tx{ID: "1-1-9001", Index: 1, Count: 3, Last: false},
		Op:     journal.OpUpdate, Database: "shop", Table: "orders",
		Key: journal.Row{{Name: "id", Value: journal.Uint(math.MaxUint64)}},
		Before: journal.Row{
			{Name: "id", Value: journal.Uint(math.MaxUint64)},
			{Name: "qty", Value: journal.Int(math.MinInt64)},
			{Name: "price", Value: journal.Decimal("12345678901234567890.000100")},
			{Name: "note", Value: journal.String("say \"hi\"\n<é>")},
			{Name: "paid", Value: journal.Bool(false)},
			{Name: "deleted_at", Value: journal.Null()},
		},
		After: journal.Row{
			{Name: "id", Value: journal.Uint(math.MaxUint64)},
			{Name: "qty", Value: journal.Int(9007199254740993)}, // 2^53 + 1: not a float64
			{Name: "price", Value: journal.Decimal("-0.10")},
			{Name: "note", Value: journal.String("")},
			{Name: "paid", Value: journal.Bool(true)},
			{Name: "ratio", Value: journal.Value{Kind: journal.KindFloat32, Float: float64(float32(0.1))}},
			{Name: "score", Value: journal.Float64(0.1)},
			{Name: "nan", Value: journal.Float64(math.NaN())},
			{Name: "inf", Value: journal.Float64(math.Inf(-1))},
			{Name: "blob", Value: journal.Bytes([]byte{0, 1, 2, 0xff})},
			{Name: "at", Value: journal.Value{Kind: journal.KindTemporal, Str: "2024-02-29 23:59:59.000001"}},
			{Name: "doc", Value: journal.Value{Kind: journal.KindJSON, Str: `{"a": [1, 2]}`}},
			{Name: "deleted_at", Value: journal.Null()},
		},
		SchemaVersion: 5,
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update if intended):\n%s", name, got)
	}
}

func indent(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := json.Indent(&b, data, "", "  "); err != nil {
		t.Fatalf("invalid JSON %s: %v", data, err)
	}
	return append(b.Bytes(), '\n')
}

// The envelope of an entry with every field set, against testdata (docs/feeds.md shows it).
func TestEnvelopeGolden(t *testing.T) {
	e := fullEntry()
	m, err := buildMsg(Subjects{Prefix: "music"}, &e, "here", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "envelope_update.json", indent(t, m.Data))

	if m.Subject != "music.changes.shop.orders.update" {
		t.Errorf("subject %q", m.Subject)
	}
	for k, want := range map[string]string{
		nats.MsgIdHdr: "binlog/a/orders-db:42", HeaderStream: "binlog/a/orders-db", HeaderSeq: "42", HeaderOrigin: "irvine",
	} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}

	ddl := journal.Entry{Stream: "binlog/a/x", Seq: 1, Epoch: 1, Op: journal.OpDDL, Database: "shop", Table: "orders",
		Statement: "ALTER TABLE orders ADD note TEXT", Columns: []journal.Column{{Name: "id", Type: "bigint unsigned"}, {Name: "note", Type: "text"}}}
	m, err = buildMsg(Subjects{Prefix: "music"}, &ddl, "here", "r1", 0)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "envelope_ddl.json", indent(t, m.Data))
	if got := m.Header.Get(nats.MsgIdHdr); got != "binlog/a/x:1:r1" {
		t.Errorf("re-publication msg id %q", got)
	}
	if got := m.Header.Get(HeaderOrigin); got != "here" {
		t.Errorf("origin of an entry without one: %q, want the relay's site", got)
	}
}

// The hand-written encoder writes exactly what encoding/json writes for the Envelope type.
func TestEnvelopeEncoderMatchesType(t *testing.T) {
	ddl := journal.Entry{Stream: "s/1", Seq: 1, Op: journal.OpDDL, Statement: "CREATE TABLE \u2028 <x> & \xff", Columns: []journal.Column{{Name: "a", Type: "int"}}}
	for _, e := range []journal.Entry{fullEntry(), ddl, {Stream: "s/2", Seq: 2, Op: journal.OpMark, Origin: "o\u2029\x01\x7f"}} {
		want, err := json.Marshal(NewEnvelope(&e, "site"))
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEnvelope(nil, &e, "site", false); !bytes.Equal(got, want) {
			t.Errorf("appendEnvelope:\n%s\nencoding/json:\n%s", got, want)
		}
		env := NewEnvelope(&e, "site")
		env.Before, env.After, env.Key, env.DDL, env.Truncated = jsonNull, jsonNull, jsonNull, nil, true
		want, _ = json.Marshal(env)
		if got := appendEnvelope(nil, &e, "site", true); !bytes.Equal(got, want) {
			t.Errorf("truncated appendEnvelope:\n%s\nencoding/json:\n%s", got, want)
		}
	}
}

// Every digit of 64-bit integers and decimals survives a round trip through JSON.
func TestEnvelopeExactNumbers(t *testing.T) {
	e := fullEntry()
	m, err := buildMsg(Subjects{Prefix: "music"}, &e, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	env, err := DecodeEnvelope(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(env.After))
	dec.UseNumber()
	var after map[string]any
	if err := dec.Decode(&after); err != nil {
		t.Fatal(err)
	}
	for col, want := range map[string]string{"id": "18446744073709551615", "qty": "9007199254740993", "price": "-0.10", "ratio": "0.1", "nan": "NaN", "blob": "AAEC/w=="} {
		if got := after[col]; got == nil || toString(got) != want {
			t.Errorf("after.%s = %v, want %s", col, got, want)
		}
	}
	if env.Op != "u" || env.TsMs != 1_700_000_000_123 || env.Source.Seq != 42 || *env.Source.GTID != "1-1-9001" || env.Transaction.Total != 3 {
		t.Errorf("decoded %+v", env)
	}
}

func toString(v any) string {
	switch v := v.(type) {
	case json.Number:
		return v.String()
	case string:
		return v
	}
	return "?"
}

// An entry whose envelope exceeds the server's maximum payload is published without images.
func TestEnvelopeTruncated(t *testing.T) {
	e := fullEntry()
	e.After = append(e.After, journal.Field{Name: "big", Value: journal.String(strings.Repeat("x", 5000))})
	m, err := buildMsg(Subjects{Prefix: "music"}, &e, "", "", 4096)
	if err != nil {
		t.Fatal(err)
	}
	env, err := DecodeEnvelope(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if !env.Truncated || string(env.After) != "null" || env.Source.Seq != 42 || len(m.Data) > 4096 {
		t.Errorf("truncated envelope of %d bytes: %s", len(m.Data), m.Data)
	}
}

// appendJSONString writes what encoding/json writes for every byte, alone and between others,
// and for the runes it treats apart.
func TestJSONStringMatchesEncodingJSON(t *testing.T) {
	var cases []string
	for c := 0; c < 256; c++ {
		cases = append(cases, string([]byte{byte(c)}), "ab"+string([]byte{byte(c)})+"cd")
	}
	cases = append(cases, "", "plain text", "\u2028\u2029", "a\u2028b", "é✓\U0001F600", "\xe2\x80", "\xe2\x80\xa8x", "\xff\xfe",
		"<a href=\"x\">&amp;</a>", strings.Repeat("n", 200), "tab\tnl\ncr\rbs\bff\f\x00\x1f\x7f")
	for _, s := range cases {
		checkJSONString(t, s)
	}
}

func checkJSONString(t *testing.T, s string) {
	t.Helper()
	want, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := appendJSONString([]byte("x"), s); !bytes.Equal(got[1:], want) || got[0] != 'x' {
		t.Fatalf("appendJSONString(%q) = %s, encoding/json: %s", s, got[1:], want)
	}
}

func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b\\c", "<>&", "\u2028", "\xff", "é\x00"} {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

// referenceMsg is the message of e built the plain way, with a map of header values of their
// own, as buildMsg was first written: the builder must produce exactly this.
func referenceMsg(subjects Subjects, e *journal.Entry, site, run string, maxPayload int64) (*nats.Msg, error) {
	origin := e.Origin
	if origin == "" {
		origin = site
	}
	data := appendEnvelope(nil, e, site, false)
	m := &nats.Msg{Subject: subjects.Changes(e.Database, e.Table, e.Op), Header: nats.Header{
		nats.MsgIdHdr: {MsgID(e.Stream, e.Seq, run)},
		HeaderStream:  {e.Stream},
		HeaderSeq:     {strconv.FormatUint(e.Seq, 10)},
		HeaderOrigin:  {origin},
	}}
	if maxPayload > 0 && int64(len(data)+headerSize(m)) > maxPayload {
		data = appendEnvelope(nil, e, site, true)
		if int64(len(data)+headerSize(m)) > maxPayload {
			return nil, fmt.Errorf("too big")
		}
	}
	m.Data = data
	return m, nil
}

// headerSize is the size of m's headers in the NATS protocol, as nats.go writes them.
func headerSize(m *nats.Msg) int {
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}

// The relay's builder, shared by many entries, and buildMsg build the reference message of every
// entry, each unchanged by the ones built after it: truncated ones, ones at the payload limit and
// ones larger than the builder's buffers included.
func TestMsgBuilderMatchesReference(t *testing.T) {
	subjects := Subjects{Prefix: "music"}
	var es []journal.Entry
	for i := 0; i < 600; i++ {
		e := fullEntry()
		e.Seq = uint64(i + 1)
		e.Table = []string{"orders", "lines", "my.table"}[i%3]
		e.Op = []journal.Op{journal.OpInsert, journal.OpUpdate, journal.OpDelete, journal.OpPut, journal.OpMark}[i%5]
		switch {
		case i%7 == 0:
			e.Origin = "" // the site's
		case i%50 == 1:
			e.After = append(e.After, journal.Field{Name: "big", Value: journal.String(strings.Repeat("x", 5000))})
		case i%50 == 2:
			e.After = append(e.After, journal.Field{Name: "big", Value: journal.String(strings.Repeat("y", 3000))})
		case i%200 == 3:
			e.After = append(e.After, journal.Field{Name: "huge", Value: journal.String(strings.Repeat("z", 40000))})
		}
		es = append(es, e)
	}
	run := func(i int) string {
		if i%4 == 0 {
			return "r1"
		}
		return ""
	}
	// Limits that fall exactly at the size of some messages, with and without their images.
	full, _ := referenceMsg(subjects, &es[5], "here", run(5), 0)
	fullSize := int64(len(full.Data) + headerSize(full))
	truncSize := int64(len(appendEnvelope(nil, &es[5], "here", true)) + headerSize(full))
	for _, maxPayload := range []int64{0, 4096, 1 << 20, fullSize, fullSize - 1, truncSize, truncSize - 1} {
		b := newMsgBuilder(subjects, "here", maxPayload)
		b.expect(len(es) / 2) // and more than announced
		var built []*nats.Msg
		var seqs []int
		for i := range es {
			want, werr := referenceMsg(subjects, &es[i], "here", run(i), maxPayload)
			for _, got := range []func() (*nats.Msg, error){
				func() (*nats.Msg, error) { return b.build(&es[i], run(i)) },
				func() (*nats.Msg, error) { return buildMsg(subjects, &es[i], "here", run(i), maxPayload) },
			} {
				m, err := got()
				if (err == nil) != (werr == nil) {
					t.Fatalf("entry %d, max payload %d: error %v, want %v", i, maxPayload, err, werr)
				}
				if err == nil && !msgsEqual(m, want) {
					t.Fatalf("entry %d, max payload %d:\n got %+v\nwant %+v", i, maxPayload, m, want)
				}
				if err == nil {
					built, seqs = append(built, m), append(seqs, i)
				}
			}
		}
		for k, m := range built {
			if want, _ := referenceMsg(subjects, &es[seqs[k]], "here", run(seqs[k]), maxPayload); !msgsEqual(m, want) {
				t.Fatalf("entry %d changed after later builds", seqs[k])
			}
		}
	}
}

func msgsEqual(a, b *nats.Msg) bool {
	if a.Subject != b.Subject || a.Reply != b.Reply || !bytes.Equal(a.Data, b.Data) || len(a.Header) != len(b.Header) {
		return false
	}
	for k, vs := range b.Header {
		if len(a.Header[k]) != len(vs) || len(vs) != 1 || a.Header[k][0] != vs[0] {
			return false
		}
	}
	return true
}

func TestOpCodes(t *testing.T) {
	for op, want := range map[journal.Op]string{journal.OpInsert: "c", journal.OpUpdate: "u", journal.OpDelete: "d",
		journal.OpPut: "put", journal.OpDDL: "ddl", journal.OpMark: "mark"} {
		if got := OpCode(op); got != want {
			t.Errorf("OpCode(%v) = %q, want %q", op, got, want)
		}
	}
}

func TestSubjectTokens(t *testing.T) {
	for _, tc := range []struct{ name, token string }{
		{"orders", "orders"},
		{"order_items-2", "order_items-2"},
		{"", "%"},
		{"a.b", "a%2Eb"},
		{"*", "%2A"},
		{">", "%3E"},
		{"with space\t", "with%20space%09"},
		{"100%", "100%25"},
		{"$SYS", "%24SYS"},
		{"é", "%C3%A9"},
	} {
		if got := EscapeToken(tc.name); got != tc.token {
			t.Errorf("EscapeToken(%q) = %q, want %q", tc.name, got, tc.token)
		}
		back, err := UnescapeToken(tc.token)
		if err != nil || back != tc.name {
			t.Errorf("UnescapeToken(%q) = %q, %v", tc.token, back, err)
		}
	}
	for _, bad := range []string{"", "a.b", "%2", "%zz", "%41", "%2e"} {
		if _, err := UnescapeToken(bad); err == nil {
			t.Errorf("UnescapeToken(%q) accepted", bad)
		}
	}
	s := Subjects{Prefix: "music"}
	if got := s.Changes("my.db", "", journal.OpPut); got != "music.changes.my%2Edb.%.put" {
		t.Errorf("Changes: %q", got)
	}
	if got := s.Ownership("p/7"); got != "music.ownership.p%2F7" {
		t.Errorf("Ownership: %q", got)
	}
	if got := s.Conflicts("shop", "orders"); got != "music.conflicts.shop.orders" {
		t.Errorf("Conflicts: %q", got)
	}
}

// Escaping never yields a token NATS would split or treat as a wildcard, and is one-to-one.
func FuzzEscapeToken(f *testing.F) {
	for _, s := range []string{"", "a.b", "%", "*>", "é\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		tok := EscapeToken(name)
		if tok == "" || strings.ContainsAny(tok, ".*> \t\r\n\x00$") {
			t.Fatalf("EscapeToken(%q) = %q", name, tok)
		}
		back, err := UnescapeToken(tok)
		if err != nil || back != name {
			t.Fatalf("round trip of %q: %q, %v", name, back, err)
		}
	})
}

func TestSequencer(t *testing.T) {
	s := NewSequencer(map[string]uint64{"a": 2}, false)
	for i, step := range []struct {
		stream string
		seq    uint64
		want   Verdict
	}{
		{"a", 1, Duplicate}, {"a", 2, Duplicate}, {"a", 4, Early}, {"a", 3, Deliver}, {"a", 4, Deliver},
		{"a", 4, Duplicate}, {"b", 10, Deliver}, {"b", 12, Early}, {"b", 11, Deliver}, {"b", 12, Deliver},
	} {
		if got := s.Next(step.stream, step.seq); got != step.want {
			t.Errorf("step %d: Next(%s, %d) = %v, want %v", i, step.stream, step.seq, got, step.want)
		}
	}
	if last, ok := s.Last("b"); !ok || last != 12 {
		t.Errorf("Last(b) = %d, %v", last, ok)
	}
}

// The JetStream stream as the relay leaves it after out-of-order stores and re-publications
// (early copies, repair copies, duplicates from a crash): the Sequencer delivers each seq once,
// in order.
func TestSequencerOverRelayOutput(t *testing.T) {
	// a previous relay's early copy of 4 first; entry 3 lost, 5 stored early; the repair run stores 3, 4, 5; a restarted relay's
	// re-publications of 4 and 5 land after (its anchor 5 deduplicated), then 6.
	stored := []uint64{4, 1, 2, 5, 3, 4, 5, 4, 5, 6}
	s := NewSequencer(nil, true)
	var got []uint64
	for _, seq := range stored {
		if s.Next("x", seq) == Deliver {
			got = append(got, seq)
		}
	}
	if want := []uint64{1, 2, 3, 4, 5, 6}; !slicesEqual(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestInOrder(t *testing.T) {
	if !inOrder(0, 1) || !inOrder(5, 9) || inOrder(9, 5) || inOrder(5, 5) {
		t.Error("inOrder")
	}
}
