package applier

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/musicd/musicd/journal"
)

func ts(wall int64) journal.Timestamp { return journal.Timestamp{Wall: wall} }

func row(id int64, v string) journal.Row {
	return journal.Row{{Name: "id", Value: journal.Int(id)}, {Name: "v", Value: journal.String(v)}}
}

func entry(op journal.Op, origin string, wall int64, before, after journal.Row) journal.Entry {
	e := journal.Entry{Op: op, Origin: origin, HLC: ts(wall), Database: "d", Table: "t", Before: before, After: after}
	if after != nil {
		e.Key = after[:1]
	} else {
		e.Key = before[:1]
	}
	return e
}

func clock(wall int64, origin string) *RowClock { return &RowClock{HLC: ts(wall), Origin: origin} }

// actions renders a decision compactly: "insert(1:x) clock(1@10a)".
func actions(d Decision) string {
	var b []string
	for _, a := range d.Actions {
		switch a.Kind {
		case ActInsert, ActUpsert:
			b = append(b, fmt.Sprintf("%s(%d:%s)", a.Kind, a.Row[0].Value.Int, a.Row[1].Value.Str))
		case ActUpdate:
			b = append(b, fmt.Sprintf("update(%d<-%d:%s)", a.Key[0].Value.Int, a.Row[0].Value.Int, a.Row[1].Value.Str))
		case ActDelete:
			b = append(b, fmt.Sprintf("delete(%d)", a.Key[0].Value.Int))
		case ActClock:
			b = append(b, fmt.Sprintf("clock(%d@%d%s)", a.Key[0].Value.Int, a.Clock.HLC.Wall, a.Clock.Origin))
		case ActDeadLetter:
			b = append(b, "dead_letter")
		}
	}
	s := strings.Join(b, " ")
	if d.Conflict {
		s = "conflict:" + string(d.Resolution) + " " + s
	}
	return strings.TrimSpace(s)
}

func TestDecide(t *testing.T) {
	lww := Rule{Resolve: ResolveLWW, LocalSite: "b"}
	prio := Rule{Resolve: ResolvePriority, Priority: []string{"b", "a"}, LocalSite: "b"}
	dead := Rule{Resolve: ResolveDeadLetter, LocalSite: "b"}
	for _, tc := range []struct {
		name string
		e    journal.Entry
		st   TargetState
		rule Rule
		want string
	}{
		{"insert of a new row", entry(journal.OpInsert, "a", 10, nil, row(1, "x")), TargetState{}, lww,
			"insert(1:x) clock(1@10a)"},
		{"insert of the same row again", entry(journal.OpInsert, "a", 10, nil, row(1, "x")), TargetState{Exists: true, Matches: true}, lww,
			"upsert(1:x) clock(1@10a)"},
		{"insert over a newer deletion (tombstone) keeps it deleted", entry(journal.OpInsert, "a", 10, nil, row(1, "x")),
			TargetState{Clock: clock(20, "b")}, lww, "conflict:target_kept"},
		{"insert over an older deletion", entry(journal.OpInsert, "a", 30, nil, row(1, "x")),
			TargetState{Clock: clock(20, "b")}, lww, "insert(1:x) clock(1@30a)"},
		{"insert/insert: incoming newer wins", entry(journal.OpInsert, "a", 30, nil, row(1, "x")),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:incoming_wins upsert(1:x) clock(1@30a)"},
		{"insert/insert: target newer kept", entry(journal.OpInsert, "a", 10, nil, row(1, "x")),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:target_kept"},
		{"update matching before", entry(journal.OpUpdate, "a", 10, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Matches: true}, lww, "update(1<-1:y) clock(1@10a)"},
		{"update matching before, older clock", entry(journal.OpUpdate, "a", 10, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Matches: true, Clock: clock(5, "b")}, lww, "update(1<-1:y) clock(1@10a)"},
		{"update matching before but target written later (ABA) is a conflict", entry(journal.OpUpdate, "a", 10, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Matches: true, Clock: clock(20, "b")}, lww, "conflict:target_kept"},
		{"update that changes the key", entry(journal.OpUpdate, "a", 10, row(1, "x"), row(2, "x")),
			TargetState{Exists: true, Matches: true}, lww, "update(1<-2:x) clock(1@10a) clock(2@10a)"},
		{"update of a changed row, incoming newer", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:incoming_wins upsert(1:y) clock(1@30a)"},
		{"update of a changed row without a clock: incoming wins under LWW", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true}, lww, "conflict:incoming_wins upsert(1:y) clock(1@30a)"},
		{"update of a row deleted earlier recreates it", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Clock: clock(20, "b")}, lww, "conflict:incoming_wins upsert(1:y) clock(1@30a)"},
		{"update of a row deleted later stays deleted", entry(journal.OpUpdate, "a", 10, row(1, "x"), row(1, "y")),
			TargetState{Clock: clock(20, "b")}, lww, "conflict:target_kept"},
		{"key-changing update that wins a conflict", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(2, "y")),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:incoming_wins delete(1) clock(1@30a) upsert(2:y) clock(2@30a)"},
		{"delete matching before", entry(journal.OpDelete, "a", 10, row(1, "x"), nil),
			TargetState{Exists: true, Matches: true}, lww, "delete(1) clock(1@10a)"},
		{"delete of a missing row leaves a tombstone", entry(journal.OpDelete, "a", 10, row(1, "x"), nil),
			TargetState{}, lww, "clock(1@10a)"},
		{"delete of a changed row, incoming newer", entry(journal.OpDelete, "a", 30, row(1, "x"), nil),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:incoming_wins delete(1) clock(1@30a)"},
		{"delete of a row changed later", entry(journal.OpDelete, "a", 10, row(1, "x"), nil),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:target_kept"},
		{"same HLC: origin breaks the tie", entry(journal.OpUpdate, "a", 20, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Clock: clock(20, "b")}, lww, "conflict:target_kept"},
		{"priority: higher-priority target kept though older", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Clock: clock(20, "b")}, prio, "conflict:target_kept"},
		{"priority: unclocked local row has the local site's priority", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true}, prio, "conflict:target_kept"},
		{"priority: same site falls back to LWW", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Clock: clock(20, "a")}, prio, "conflict:incoming_wins upsert(1:y) clock(1@30a)"},
		{"priority: higher-priority incoming wins though older", entry(journal.OpUpdate, "b", 10, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Clock: clock(20, "a")}, Rule{Resolve: ResolvePriority, Priority: []string{"b", "a"}, LocalSite: "c"},
			"conflict:incoming_wins upsert(1:y) clock(1@10b)"},
		{"dead letter keeps the target", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Clock: clock(20, "b")}, dead, "conflict:dead_letter dead_letter"},
		{"dead letter: no conflict applies as usual", entry(journal.OpUpdate, "a", 30, row(1, "x"), row(1, "y")),
			TargetState{Exists: true, Matches: true}, dead, "update(1<-1:y) clock(1@30a)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := actions(decide(&tc.e, tc.st, tc.rule)); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// site is a model of one site's target table and row clocks, driven only by decide: enough to
// check that two sites that see the same writes in different orders end with the same rows.
type site struct {
	name   string
	rows   map[int64]journal.Row
	clocks map[int64]RowClock
}

func newSite(name string, init journal.Row) *site {
	s := &site{name: name, rows: map[int64]journal.Row{}, clocks: map[int64]RowClock{}}
	if init != nil {
		s.rows[init[0].Value.Int] = init
	}
	return s
}

// local performs a native write at the site and returns its journal entry (the capture stamps it
// with the site's HLC and, through the local stream, the applier stamps the row's clock).
func (s *site) local(op journal.Op, wall int64, v string, id int64) journal.Entry {
	before := s.rows[id]
	var after journal.Row
	if op != journal.OpDelete {
		after = row(id, v)
		s.rows[id] = after
	} else {
		delete(s.rows, id)
	}
	s.clocks[id] = RowClock{HLC: ts(wall), Origin: s.name}
	return entry(op, s.name, wall, before, after)
}

func (s *site) apply(t *testing.T, e journal.Entry, rule Rule) {
	id := targetKey(&e)[0].Value.Int
	cur, ok := s.rows[id]
	st := TargetState{Exists: ok}
	if ok {
		img := compareImage(&e)
		st.Matches = img != nil && img[1].Value.Equal(cur[1].Value)
	}
	if c, ok := s.clocks[id]; ok {
		st.Clock = &c
	}
	rule.LocalSite = s.name
	for _, a := range decide(&e, st, rule).Actions {
		switch a.Kind {
		case ActInsert, ActUpsert, ActUpdate:
			s.rows[a.Row[0].Value.Int] = a.Row
		case ActDelete:
			delete(s.rows, a.Key[0].Value.Int)
		case ActClock:
			s.clocks[a.Key[0].Value.Int] = a.Clock
		case ActDeadLetter:
		default:
			t.Fatalf("action %v", a.Kind)
		}
	}
}

func (s *site) state() string {
	if r, ok := s.rows[1]; ok {
		return r[1].Value.Str
	}
	return "<deleted>"
}

// Two sites change the same row concurrently; each applies the other's change. Under LWW and
// under site priority both end with the same row, whichever way the clocks fall, deletes included.
func TestDecideDeterministicAcrossSites(t *testing.T) {
	type write struct {
		op   journal.Op
		wall int64
		v    string
	}
	ops := []write{
		{journal.OpUpdate, 10, "a10"}, {journal.OpUpdate, 30, "a30"}, {journal.OpDelete, 20, ""}, {journal.OpDelete, 40, ""},
	}
	opsB := []write{
		{journal.OpUpdate, 15, "b15"}, {journal.OpUpdate, 30, "b30"}, {journal.OpDelete, 25, ""}, {journal.OpDelete, 30, ""},
	}
	for _, rule := range []Rule{{Resolve: ResolveLWW}, {Resolve: ResolvePriority, Priority: []string{"b", "a"}}} {
		for _, wa := range ops {
			for _, wb := range opsB {
				name := fmt.Sprintf("%s/a:%v@%d/b:%v@%d", rule.Resolve, wa.op, wa.wall, wb.op, wb.wall)
				t.Run(name, func(t *testing.T) {
					a, b := newSite("a", row(1, "v0")), newSite("b", row(1, "v0"))
					ea := a.local(wa.op, wa.wall, wa.v, 1)
					eb := b.local(wb.op, wb.wall, wb.v, 1)
					a.apply(t, eb, rule)
					b.apply(t, ea, rule)
					if a.state() != b.state() {
						t.Fatalf("sites diverge: a has %s, b has %s", a.state(), b.state())
					}
					if rule.Resolve == ResolveLWW {
						want := wb
						if (RowClock{HLC: ts(wb.wall), Origin: "b"}).Less(RowClock{HLC: ts(wa.wall), Origin: "a"}) {
							want = wa
						}
						if got, w := a.state(), map[bool]string{true: "<deleted>", false: want.v}[want.op == journal.OpDelete]; got != w {
							t.Fatalf("winner %s, want %s", got, w)
						}
					}
				})
			}
		}
	}
}

func TestKeyHash(t *testing.T) {
	k := func(v journal.Value) journal.Row { return journal.Row{{Name: "id", Value: v}} }
	// Hashes are stored in row_clock: the encoding must not change. Computed by the first
	// implementation, for an integer and a text column.
	golden := journal.Row{{Name: "id", Value: journal.Int(-7)}, {Name: "name", Value: journal.String("x")}}
	if got := fmt.Sprintf("%x", keyHash(golden)); got != "aeb06a8267adb7a384379abc57ddf29a9c26abaf2fe745d5611ff214bb5df648" {
		t.Errorf("keyHash of (id -7, name x) = %s: the stored clocks would no longer be found", got)
	}
	if string(keyHash(k(journal.Int(7)))) != string(keyHash(k(journal.Uint(7)))) {
		t.Error("INT 7 and INT UNSIGNED 7 hash differently")
	}
	for _, pair := range [][2]journal.Row{
		{k(journal.Int(-7)), k(journal.Uint(7))},
		{k(journal.String("7")), k(journal.Int(7))},
		{k(journal.String("ab")), k(journal.Bytes([]byte("ab")))},
		{k(journal.Float64(1.5)), k(journal.Float64(2.5))}, // once collided: every float key hashed alike
		{journal.Row{{Name: "a", Value: journal.String("b")}, {Name: "c", Value: journal.String("")}},
			journal.Row{{Name: "a", Value: journal.String("")}, {Name: "bc", Value: journal.String("")}}},
	} {
		if string(keyHash(pair[0])) == string(keyHash(pair[1])) {
			t.Errorf("%v and %v hash the same", pair[0], pair[1])
		}
	}
}

func TestChunks(t *testing.T) {
	small := func(n int) []int { return slices.Repeat([]int{100}, n) }
	for _, c := range []struct {
		sizes []int
		want  []int
	}{
		{small(1), []int{1}},
		{small(10), []int{10}},    // one statement for a small transaction
		{small(16), []int{16}},    // exactSizes
		{small(17), []int{16, 1}}, // above: multiples of exactSizes
		{small(100), []int{96, 4}},
		{small(128), []int{128}},
		{small(300), []int{128, 128, 32, 12}},
		{[]int{maxStmtBytes / 2, maxStmtBytes / 2, maxStmtBytes / 2}, []int{2, 1}}, // bounded by bytes
		{slices.Repeat([]int{maxStmtBytes / 40}, 60), []int{32, 16, 12}},
	} {
		if got := chunks(c.sizes); !slices.Equal(got, c.want) {
			t.Errorf("chunks of %d items: %v, want %v", len(c.sizes), got, c.want)
		}
	}
}
