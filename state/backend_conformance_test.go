package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// runBackendConformance runs the behaviour every Backend must have. newBackend returns a backend
// for one subtest (closed by the caller's cleanup); it may share its metadata with other
// subtests, so each subtest works in keyspaces of its own and only looks at those.
func runBackendConformance(t *testing.T, newBackend func(t *testing.T) Backend) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, b Backend)
	}{
		{"Keyspaces", testBackendKeyspaces},
		{"Tables", testBackendTables},
		{"Types", testBackendTypes},
		{"InvalidMutations", testBackendInvalidMutations},
		{"LastWriterWins", testBackendLastWriterWins},
		{"CompoundKeys", testBackendCompoundKeys},
		{"Paging", testBackendPaging},
		{"SparseFilter", testBackendSparseFilter},
		{"DroppedTable", testBackendDroppedTable},
		{"Recreate", testBackendRecreate},
		{"PagingUnderWrites", testBackendPagingUnderWrites},
		{"Concurrent", testBackendConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newBackend(t)) })
	}
}

func bkTestCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testKeyspace creates a keyspace of the test's own, dropped at the end.
func bkTestKeyspace(t *testing.T, b Backend) string {
	t.Helper()
	name := testenv.UniqueName("st_")
	if err := b.CreateKeyspace(bkTestCtx(t), Keyspace{Name: name}); err != nil {
		t.Fatalf("CreateKeyspace(%s): %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := b.DropKeyspace(ctx, name); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("DropKeyspace(%s): %v", name, err)
		}
	})
	return name
}

func bkMustCreateTable(t *testing.T, b Backend, tbl Table) Table {
	t.Helper()
	if err := b.CreateTable(bkTestCtx(t), tbl); err != nil {
		t.Fatalf("CreateTable(%s.%s): %v", tbl.Keyspace, tbl.Name, err)
	}
	return tbl
}

func bkMustApply(t *testing.T, b Backend, tbl Table, ms ...Mutation) {
	t.Helper()
	if err := b.Apply(bkTestCtx(t), tbl, LevelGlobal, ms...); err != nil {
		t.Fatalf("Apply to %s: %v", tbl.Name, err)
	}
}

// row builds a journal.Row from name, value pairs.
func bkRow(kv ...any) journal.Row {
	var r journal.Row
	for i := 0; i < len(kv); i += 2 {
		r = append(r, journal.Field{Name: kv[i].(string), Value: kv[i+1].(journal.Value)})
	}
	return r
}

func bkPut(key journal.Row, ts int64, values journal.Row) Mutation {
	return Mutation{Op: MutPut, Key: key, Values: values, Timestamp: ts}
}

func bkUpdate(key journal.Row, ts int64, values journal.Row) Mutation {
	return Mutation{Op: MutUpdate, Key: key, Values: values, Timestamp: ts}
}

func bkDel(key journal.Row, ts int64) Mutation {
	return Mutation{Op: MutDelete, Key: key, Timestamp: ts}
}

func bkSameValue(a, b journal.Value) bool {
	if a.Kind != b.Kind {
		return false
	}
	switch a.Kind {
	case journal.KindNull:
		return true
	case journal.KindInt:
		return a.Int == b.Int
	case journal.KindBool, journal.KindUint:
		return a.Uint == b.Uint
	case journal.KindFloat32, journal.KindFloat64:
		return a.Float == b.Float || (math.IsNaN(a.Float) && math.IsNaN(b.Float))
	case journal.KindBytes:
		return bytes.Equal(a.Bytes, b.Bytes)
	}
	return a.Str == b.Str
}

func bkShowValue(v journal.Value) string {
	switch v.Kind {
	case journal.KindNull:
		return "null"
	case journal.KindInt:
		return fmt.Sprint(v.Int)
	case journal.KindBool:
		return fmt.Sprint(v.Uint != 0)
	case journal.KindFloat32, journal.KindFloat64:
		return fmt.Sprintf("%g(kind %d)", v.Float, v.Kind)
	case journal.KindBytes:
		return fmt.Sprintf("bytes%v", v.Bytes)
	}
	return fmt.Sprintf("%q(kind %d)", v.Str, v.Kind)
}

func bkShowRow(r journal.Row) string {
	var parts []string
	for _, f := range r {
		parts = append(parts, f.Name+"="+bkShowValue(f.Value))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// checkRow verifies that got has exactly the table's columns in declared order, with want's
// values for the columns want names and null for the others.
func bkCheckRow(t *testing.T, tbl Table, got journal.Row, want journal.Row) {
	t.Helper()
	if len(got) != len(tbl.Columns) {
		t.Fatalf("row %s has %d columns, want %d", bkShowRow(got), len(got), len(tbl.Columns))
	}
	for i, c := range tbl.Columns {
		if got[i].Name != c.Name {
			t.Fatalf("row %s: column %d is %s, want %s", bkShowRow(got), i, got[i].Name, c.Name)
		}
		w := journal.Null()
		for _, f := range want {
			if f.Name == c.Name {
				w = f.Value
			}
		}
		if !bkSameValue(got[i].Value, w) {
			t.Errorf("column %s = %s, want %s (row %s)", c.Name, bkShowValue(got[i].Value), bkShowValue(w), bkShowRow(got))
		}
	}
}

// mustGet reads a row that must exist and checks it.
func bkMustGet(t *testing.T, b Backend, tbl Table, key journal.Row, version int64, want journal.Row) {
	t.Helper()
	r, ok, err := b.Get(bkTestCtx(t), tbl, LevelGlobal, key)
	if err != nil || !ok {
		t.Fatalf("Get %s: found=%v err=%v, want the row", bkShowRow(key), ok, err)
	}
	if r.Version != version {
		t.Errorf("Get %s: version %d, want %d", bkShowRow(key), r.Version, version)
	}
	bkCheckRow(t, tbl, r.Values, append(append(journal.Row{}, key...), want...))
}

func bkMustBeAbsent(t *testing.T, b Backend, tbl Table, key journal.Row) {
	t.Helper()
	r, ok, err := b.Get(bkTestCtx(t), tbl, LevelGlobal, key)
	if err != nil || ok {
		t.Fatalf("Get %s: found=%v (%s) err=%v, want no row", bkShowRow(key), ok, bkShowRow(r.Values), err)
	}
}

func bkWantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: %v, want %v", what, err, target)
	}
}

func testBackendKeyspaces(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	prefix := testenv.UniqueName("st_") + "_"
	k1 := Keyspace{Name: prefix + "b"}
	k2 := Keyspace{Name: prefix + "a", Replication: map[string]int{"datacenter1": 1}}
	for _, ks := range []Keyspace{k1, k2} {
		if err := b.CreateKeyspace(ctx, ks); err != nil {
			t.Fatalf("CreateKeyspace(%+v): %v", ks, err)
		}
		t.Cleanup(func() { _ = b.DropKeyspace(context.Background(), ks.Name) })
	}
	got, err := b.Keyspace(ctx, k2.Name)
	if err != nil || got.Name != k2.Name || len(got.Replication) != 1 || got.Replication["datacenter1"] != 1 {
		t.Errorf("Keyspace(%s) = %+v, %v; want %+v", k2.Name, got, err, k2)
	}
	if got, err := b.Keyspace(ctx, k1.Name); err != nil || got.Name != k1.Name || len(got.Replication) != 0 {
		t.Errorf("Keyspace(%s) = %+v, %v; want no replication", k1.Name, got, err)
	}
	list, err := b.Keyspaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mine []string
	for _, ks := range list {
		if strings.HasPrefix(ks.Name, prefix) {
			mine = append(mine, ks.Name)
		}
	}
	if !slices.Equal(mine, []string{k2.Name, k1.Name}) {
		t.Errorf("Keyspaces: ours are %v, want [%s %s] in that order", mine, k2.Name, k1.Name)
	}
	bkWantErr(t, "CreateKeyspace of an existing name", b.CreateKeyspace(ctx, Keyspace{Name: k1.Name}), ErrExists)

	for _, ks := range []Keyspace{
		{Name: ""},
		{Name: "Upper"},
		{Name: "music_x"},
		{Name: "system_x"},
		{Name: "a-b"},
		{Name: strings.Repeat("a", MaxIdentifierLen+1)},
		{Name: prefix + "r1", Replication: map[string]int{"dc1": 0}},
		{Name: prefix + "r2", Replication: map[string]int{"dc'1": 1}},
		{Name: prefix + "r3", Replication: map[string]int{"dc1": MaxReplicas + 1}},
	} {
		bkWantErr(t, fmt.Sprintf("CreateKeyspace(%+v)", ks), b.CreateKeyspace(ctx, ks), ErrInvalid)
		if ValidateIdentifier("keyspace", ks.Name) == nil {
			_, err := b.Keyspace(ctx, ks.Name)
			bkWantErr(t, "Keyspace after a rejected create", err, ErrNotFound)
		}
	}

	_, err = b.Keyspace(ctx, prefix+"none")
	bkWantErr(t, "Keyspace of a missing keyspace", err, ErrNotFound)
	_, err = b.Tables(ctx, prefix+"none")
	bkWantErr(t, "Tables of a missing keyspace", err, ErrNotFound)
	_, err = b.Keyspace(ctx, "Bad Name")
	bkWantErr(t, "Keyspace of an invalid name", err, ErrInvalid)

	if err := b.DropKeyspace(ctx, k1.Name); err != nil {
		t.Fatalf("DropKeyspace: %v", err)
	}
	_, err = b.Keyspace(ctx, k1.Name)
	bkWantErr(t, "Keyspace after drop", err, ErrNotFound)
	bkWantErr(t, "DropKeyspace twice", b.DropKeyspace(ctx, k1.Name), ErrNotFound)
	list, err = b.Keyspaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ks := range list {
		if ks.Name == k1.Name {
			t.Errorf("Keyspaces lists the dropped keyspace %s", k1.Name)
		}
	}
}

func bkSimpleTable(ks, name string) Table {
	return Table{
		Keyspace:     ks,
		Name:         name,
		Columns:      []Column{{"id", Text}, {"a", Text}, {"b", Int}},
		PartitionKey: []string{"id"},
	}
}

func testBackendTables(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	ks := bkTestKeyspace(t, b)
	t2 := Table{
		Keyspace:     ks,
		Name:         "events",
		Columns:      []Column{{"day", Text}, {"seq", Bigint}, {"body", Blob}, {"at", Timestamp}},
		PartitionKey: []string{"day"},
		Clustering:   []string{"seq"},
	}
	t1 := bkSimpleTable(ks, "users")
	bkMustCreateTable(t, b, t1)
	bkMustCreateTable(t, b, t2)

	list, err := b.Tables(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || !sameTable(list[0], t2) || !sameTable(list[1], t1) {
		t.Fatalf("Tables = %+v, want [%+v %+v]", list, t2, t1)
	}
	got, err := b.Table(ctx, ks, t2.Name)
	if err != nil || !sameTable(got, t2) {
		t.Errorf("Table = %+v, %v; want %+v", got, err, t2)
	}
	bkWantErr(t, "CreateTable of an existing name", b.CreateTable(ctx, t1), ErrExists)
	missing := bkSimpleTable(ks+"x", "users")
	bkWantErr(t, "CreateTable in a missing keyspace", b.CreateTable(ctx, missing), ErrNotFound)
	_, err = b.Table(ctx, ks, "nothing")
	bkWantErr(t, "Table of a missing table", err, ErrNotFound)
	_, err = b.Table(ctx, ks, "Bad")
	bkWantErr(t, "Table of an invalid name", err, ErrInvalid)

	for i, mut := range []func(*Table){
		func(t *Table) { t.Columns = nil },
		func(t *Table) { t.Columns = append(t.Columns, Column{"c", "varchar"}) },
		func(t *Table) { t.Columns = append(t.Columns, Column{"music_ts", Bigint}) },
		func(t *Table) { t.Columns = append(t.Columns, Column{"a", Text}) },
		func(t *Table) { t.Columns = append(t.Columns, Column{`x" text, y`, Text}) },
		func(t *Table) { t.PartitionKey = nil },
		func(t *Table) { t.PartitionKey = []string{"nope"} },
		func(t *Table) { t.Clustering = []string{"id"} },
		func(t *Table) { t.PartitionKey = []string{"id", "a", "b"} },
		func(t *Table) { t.Name = "Bad" },
	} {
		bad := bkSimpleTable(ks, fmt.Sprintf("bad%d", i))
		mut(&bad)
		bkWantErr(t, fmt.Sprintf("CreateTable(%+v)", bad), b.CreateTable(ctx, bad), ErrInvalid)
		if ValidateIdentifier("table", bad.Name) == nil {
			_, err := b.Table(ctx, ks, bad.Name)
			bkWantErr(t, "Table after a rejected create", err, ErrNotFound)
		}
	}

	if err := b.DropTable(ctx, ks, t1.Name); err != nil {
		t.Fatalf("DropTable: %v", err)
	}
	_, err = b.Table(ctx, ks, t1.Name)
	bkWantErr(t, "Table after drop", err, ErrNotFound)
	bkWantErr(t, "DropTable twice", b.DropTable(ctx, ks, t1.Name), ErrNotFound)
	bkWantErr(t, "DropTable in a missing keyspace", b.DropTable(ctx, ks+"x", t1.Name), ErrNotFound)
	if list, err := b.Tables(ctx, ks); err != nil || len(list) != 1 || list[0].Name != t2.Name {
		t.Errorf("Tables after drop = %+v, %v; want [%s]", list, err, t2.Name)
	}

	// Dropping a keyspace drops its tables.
	if err := b.DropKeyspace(ctx, ks); err != nil {
		t.Fatal(err)
	}
	_, err = b.Table(ctx, ks, t2.Name)
	bkWantErr(t, "Table of a dropped keyspace", err, ErrNotFound)
	_, err = b.Tables(ctx, ks)
	bkWantErr(t, "Tables of a dropped keyspace", err, ErrNotFound)
}

func bkAllTypesTable(ks string) Table {
	return Table{
		Keyspace: ks,
		Name:     "types",
		Columns: []Column{
			{"id", Text}, {"i", Int}, {"big", Bigint}, {"d", Double}, {"f", Float}, {"ok", Boolean},
			{"bl", Blob}, {"ts", Timestamp}, {"u", UUID}, {"dec", Decimal}, {"tx", Text},
		},
		PartitionKey: []string{"id"},
	}
}

func bkTemporal(s string) journal.Value { return journal.Value{Kind: journal.KindTemporal, Str: s} }
func bkFloat32v(f float32) journal.Value {
	return journal.Value{Kind: journal.KindFloat32, Float: float64(f)}
}

func testBackendTypes(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	tbl := bkMustCreateTable(t, b, bkAllTypesTable(bkTestKeyspace(t, b)))
	id := func(s string) journal.Row { return bkRow("id", journal.String(s)) }

	high := bkRow(
		"i", journal.Int(math.MaxInt32),
		"big", journal.Int(1<<53+1),
		"d", journal.Float64(1.5e300),
		"f", bkFloat32v(3.25e38),
		"ok", journal.Bool(true),
		"bl", journal.Bytes([]byte{0, 1, 2, 0xFF}),
		"ts", bkTemporal("2026-11-24T12:00:00.123Z"),
		"u", journal.String("123e4567-e89b-12d3-a456-426614174000"),
		"dec", journal.Decimal("12.50"),
		"tx", journal.String("héllo, wörld ✓"),
	)
	low := bkRow(
		"i", journal.Int(math.MinInt32),
		"big", journal.Int(math.MinInt64+1),
		"d", journal.Float64(-0.25),
		"f", bkFloat32v(-1.1),
		"ok", journal.Bool(false),
		"bl", journal.Bytes([]byte{}),
		"ts", bkTemporal("1969-12-31T23:59:59.999Z"),
		"u", journal.String("00000000-0000-0000-0000-000000000000"),
		"dec", journal.Decimal("-0.0010"),
		"tx", journal.String(""),
	)
	bkMustApply(t, b, tbl,
		bkPut(id("high"), 10, high),
		bkPut(id("low"), 11, low),
		bkPut(id("nulls"), 12, nil),
		bkPut(id("maxbig"), 13, bkRow("big", journal.Int(math.MaxInt64), "i", journal.Int(0), "dec", journal.Decimal("-123456789012345678901234567890.123456789"))),
	)
	bkMustGet(t, b, tbl, id("high"), 10, high)
	bkMustGet(t, b, tbl, id("low"), 11, low)
	bkMustGet(t, b, tbl, id("nulls"), 12, nil) // every column null, blob null (not empty)
	bkMustGet(t, b, tbl, id("maxbig"), 13, bkRow("big", journal.Int(math.MaxInt64), "i", journal.Int(0), "dec", journal.Decimal("-123456789012345678901234567890.123456789")))

	// Values are kept in their canonical form: timestamps in UTC to the millisecond, UUIDs in
	// lower case.
	bkMustApply(t, b, tbl, bkPut(id("canon"), 20, bkRow(
		"ts", bkTemporal("2026-11-24T14:30:00.5006+01:00"),
		"u", journal.String("123E4567-E89B-12D3-A456-426614174ABC"),
		"f", journal.Value{Kind: journal.KindFloat32, Float: 0.1},
	)))
	bkMustGet(t, b, tbl, id("canon"), 20, bkRow(
		"ts", bkTemporal("2026-11-24T13:30:00.500Z"),
		"u", journal.String("123e4567-e89b-12d3-a456-426614174abc"),
		"f", bkFloat32v(0.1),
	))

	// A filter on each type finds the row.
	for _, f := range high {
		p, err := b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{{Column: f.Name, Value: f.Value}}, Limit: 10})
		if err != nil {
			t.Errorf("Select %s = %s: %v", f.Name, bkShowValue(f.Value), err)
			continue
		}
		if len(p.Rows) != 1 || p.Rows[0].Values[0].Value.Str != "high" {
			t.Errorf("Select %s = %s: %d rows, want the row high", f.Name, bkShowValue(f.Value), len(p.Rows))
		}
	}
	// A null filter finds the rows where the column is null.
	p, err := b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{{Column: "bl", Value: journal.Null()}}})
	if err != nil || len(p.Rows) != 3 {
		t.Errorf("Select bl = null: %d rows, %v; want 3 (nulls, maxbig, canon)", len(p.Rows), err)
	}
	// A select returns the same rows as Get.
	p, err = b.Select(ctx, tbl, LevelLocal, Query{})
	if err != nil || len(p.Rows) != 5 || p.Next != "" {
		t.Fatalf("Select all: %d rows, next %q, %v; want 5 rows and no next", len(p.Rows), p.Next, err)
	}
	for _, r := range p.Rows {
		g, ok, err := b.Get(ctx, tbl, LevelLocal, journal.Row{r.Values[0]})
		if err != nil || !ok || g.Version != r.Version {
			t.Fatalf("Get of selected row %s: %v %v", bkShowRow(r.Values), ok, err)
		}
		bkCheckRow(t, tbl, r.Values, g.Values)
	}
}

func testBackendInvalidMutations(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	ks := bkTestKeyspace(t, b)
	tbl := bkMustCreateTable(t, b, bkAllTypesTable(ks))
	ck := bkMustCreateTable(t, b, Table{Keyspace: ks, Name: "ck", Columns: []Column{{"p", Text}, {"c", Int}, {"v", Text}},
		PartitionKey: []string{"p"}, Clustering: []string{"c"}})
	key := bkRow("id", journal.String("k"))
	for _, tc := range []struct {
		name string
		tbl  Table
		m    Mutation
	}{
		{"int out of range", tbl, bkPut(key, 1, bkRow("i", journal.Int(1<<40)))},
		{"string into int", tbl, bkPut(key, 1, bkRow("i", journal.String("1")))},
		{"int into text", tbl, bkPut(key, 1, bkRow("tx", journal.Int(1)))},
		{"float64 into float", tbl, bkPut(key, 1, bkRow("f", journal.Float64(1)))},
		{"float32 into double", tbl, bkPut(key, 1, bkRow("d", bkFloat32v(1)))},
		{"bad uuid", tbl, bkPut(key, 1, bkRow("u", journal.String("not-a-uuid")))},
		{"bad decimal", tbl, bkPut(key, 1, bkRow("dec", journal.Decimal("1e5")))},
		{"bad timestamp", tbl, bkPut(key, 1, bkRow("ts", bkTemporal("yesterday")))},
		{"string into timestamp", tbl, bkPut(key, 1, bkRow("ts", journal.String("2026-01-01T00:00:00Z")))},
		{"invalid UTF-8", tbl, bkPut(key, 1, bkRow("tx", journal.String("\xff\xfe")))},
		{"key column in values", tbl, bkUpdate(key, 1, bkRow("id", journal.String("x")))},
		{"unknown column", tbl, bkPut(key, 1, bkRow("nope", journal.Int(1)))},
		{"column twice", tbl, bkPut(key, 1, bkRow("i", journal.Int(1), "i", journal.Int(2)))},
		{"null key", tbl, bkPut(bkRow("id", journal.Null()), 1, nil)},
		{"empty key", tbl, bkPut(nil, 1, nil)},
		{"wrong key kind", tbl, bkPut(bkRow("id", journal.Int(1)), 1, nil)},
		{"key lacks clustering", ck, bkPut(bkRow("p", journal.String("a")), 1, nil)},
		{"key with a regular column", ck, bkPut(bkRow("p", journal.String("a"), "c", journal.Int(1), "v", journal.String("x")), 1, nil)},
		{"zero timestamp", tbl, bkPut(key, 0, nil)},
		{"delete with values", tbl, Mutation{Op: MutDelete, Key: key, Values: bkRow("i", journal.Int(1)), Timestamp: 1}},
		{"unknown op", tbl, Mutation{Op: 9, Key: key, Timestamp: 1}},
		{"oversized key", tbl, bkPut(bkRow("id", journal.String(strings.Repeat("k", MaxKeyBytes+1))), 1, nil)},
	} {
		// A valid mutation first: nothing of an Apply with an invalid mutation is applied.
		first := bkPut(key, 5, bkRow("i", journal.Int(1)))
		if tc.tbl.Name == ck.Name {
			first = bkPut(bkRow("p", journal.String("a"), "c", journal.Int(1)), 5, nil)
		}
		err := b.Apply(ctx, tc.tbl, LevelGlobal, first, tc.m)
		bkWantErr(t, tc.name, err, ErrInvalid)
	}
	bkMustBeAbsent(t, b, tbl, key)
	bkMustBeAbsent(t, b, ck, bkRow("p", journal.String("a"), "c", journal.Int(1)))

	_, _, err := b.Get(ctx, tbl, LevelGlobal, bkRow("id", journal.Null()))
	bkWantErr(t, "Get with a null key", err, ErrInvalid)
	_, _, err = b.Get(ctx, ck, LevelGlobal, bkRow("p", journal.String("a")))
	bkWantErr(t, "Get without the clustering column", err, ErrInvalid)
	for _, q := range []Query{
		{Limit: -1},
		{Limit: MaxPageRows + 1},
		{Filters: []Filter{{Column: "nope", Value: journal.Int(1)}}},
		{Filters: []Filter{{Column: "i", Value: journal.String("1")}}},
	} {
		_, err := b.Select(ctx, tbl, LevelGlobal, q)
		bkWantErr(t, fmt.Sprintf("Select(%+v)", q), err, ErrInvalid)
	}
	bad := tbl
	bad.Columns = append([]Column{}, tbl.Columns...)
	bad.Columns[1].Type = "varchar"
	bkWantErr(t, "Apply with an invalid definition", b.Apply(ctx, bad, LevelGlobal, bkPut(key, 1, nil)), ErrInvalid)
}

func testBackendLastWriterWins(t *testing.T, b Backend) {
	tbl := bkMustCreateTable(t, b, bkSimpleTable(bkTestKeyspace(t, b), "lww"))
	k := func(s string) journal.Row { return bkRow("id", journal.String(s)) }
	a := func(s string) journal.Value { return journal.String(s) }

	k1 := k("k1")
	bkMustApply(t, b, tbl, bkPut(k1, 100, bkRow("a", a("x"), "b", journal.Int(1))))
	bkMustApply(t, b, tbl, bkPut(k1, 50, bkRow("a", a("old"))))
	bkMustGet(t, b, tbl, k1, 100, bkRow("a", a("x"), "b", journal.Int(1)))
	// The same mutation again changes nothing.
	bkMustApply(t, b, tbl, bkPut(k1, 100, bkRow("a", a("x"), "b", journal.Int(1))))
	bkMustGet(t, b, tbl, k1, 100, bkRow("a", a("x"), "b", journal.Int(1)))

	bkMustApply(t, b, tbl, bkUpdate(k1, 200, bkRow("b", journal.Int(2))))
	bkMustGet(t, b, tbl, k1, 200, bkRow("a", a("x"), "b", journal.Int(2)))
	// Per column: an update older than the row's version but newer than the column's write wins.
	bkMustApply(t, b, tbl, bkUpdate(k1, 150, bkRow("a", a("y"))))
	bkMustGet(t, b, tbl, k1, 200, bkRow("a", a("y"), "b", journal.Int(2)))
	// A put sets the columns it does not name to null.
	bkMustApply(t, b, tbl, bkPut(k1, 300, bkRow("a", a("z"))))
	bkMustGet(t, b, tbl, k1, 300, bkRow("a", a("z")))

	// A delete, then older writes (and one at the same timestamp) change nothing.
	bkMustApply(t, b, tbl, bkDel(k1, 400))
	bkMustBeAbsent(t, b, tbl, k1)
	bkMustApply(t, b, tbl, bkUpdate(k1, 350, bkRow("b", journal.Int(5))))
	bkMustApply(t, b, tbl, bkPut(k1, 400, bkRow("a", a("tie"))))
	bkMustBeAbsent(t, b, tbl, k1)
	// A newer update recreates the row with only its columns.
	bkMustApply(t, b, tbl, bkUpdate(k1, 500, bkRow("b", journal.Int(7))))
	bkMustGet(t, b, tbl, k1, 500, bkRow("b", journal.Int(7)))
	// An older delete changes nothing.
	bkMustApply(t, b, tbl, bkDel(k1, 450))
	bkMustGet(t, b, tbl, k1, 500, bkRow("b", journal.Int(7)))

	// Equal timestamps: the greater value wins, whatever the order; a null beats a value.
	bkMustApply(t, b, tbl, bkPut(k("t1"), 10, bkRow("a", a("apple"))), bkPut(k("t1"), 10, bkRow("a", a("banana"))))
	bkMustApply(t, b, tbl, bkPut(k("t2"), 10, bkRow("a", a("banana"))))
	bkMustApply(t, b, tbl, bkPut(k("t2"), 10, bkRow("a", a("apple"))))
	bkMustGet(t, b, tbl, k("t1"), 10, bkRow("a", a("banana")))
	bkMustGet(t, b, tbl, k("t2"), 10, bkRow("a", a("banana")))
	bkMustApply(t, b, tbl, bkUpdate(k("t3"), 10, bkRow("a", a("v"), "b", journal.Int(3))))
	bkMustApply(t, b, tbl, bkUpdate(k("t3"), 10, bkRow("a", journal.Null())))
	bkMustGet(t, b, tbl, k("t3"), 10, bkRow("b", journal.Int(3)))

	// Several mutations of one row in one call, and of several partitions in one call.
	bkMustApply(t, b, tbl,
		bkPut(k("m"), 1000, bkRow("a", a("p"))),
		bkUpdate(k("m"), 1001, bkRow("b", journal.Int(9))),
		bkDel(k("m"), 999),
		bkPut(k("n1"), 7, bkRow("a", a("n1"))),
		bkPut(k("n2"), 8, bkRow("b", journal.Int(2))),
	)
	bkMustGet(t, b, tbl, k("m"), 1001, bkRow("a", a("p"), "b", journal.Int(9)))
	bkMustGet(t, b, tbl, k("n1"), 7, bkRow("a", a("n1")))
	bkMustGet(t, b, tbl, k("n2"), 8, bkRow("b", journal.Int(2)))
	bkMustApply(t, b, tbl, bkDel(k("n1"), 9), bkPut(k("n2"), 9, nil))
	bkMustBeAbsent(t, b, tbl, k("n1"))
	bkMustGet(t, b, tbl, k("n2"), 9, nil)
	// Apply of nothing is fine.
	bkMustApply(t, b, tbl)
}

func bkCompoundTable(ks string) Table {
	return Table{
		Keyspace: ks,
		Name:     "scores",
		Columns: []Column{
			{"region", Text}, {"seq", Int}, {"score", Bigint}, {"shard", Int}, {"name", Text}, {"note", Text},
		},
		PartitionKey: []string{"region", "shard"},
		Clustering:   []string{"seq", "name"},
	}
}

func testBackendCompoundKeys(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	tbl := bkMustCreateTable(t, b, bkCompoundTable(bkTestKeyspace(t, b)))
	seqs := []int64{10, -5, 3, 0, -1, math.MaxInt32, math.MinInt32}
	names := []string{"b", "ab", "a", "B", "é"}
	var ms []Mutation
	key := func(region string, shard, seq int64, name string) journal.Row {
		return bkRow("region", journal.String(region), "shard", journal.Int(shard), "seq", journal.Int(seq), "name", journal.String(name))
	}
	ts := int64(1)
	var abTS int64
	for _, region := range []string{"eu", "us"} {
		for _, shard := range []int64{-1, 1} {
			for _, seq := range seqs {
				for ni, name := range names {
					ts++
					if region == "eu" && shard == -1 && seq == -5 && name == "ab" {
						abTS = ts
					}
					ms = append(ms, bkPut(key(region, shard, seq, name), ts, bkRow("score", journal.Int(seq*10+int64(ni)), "note", journal.String(region))))
				}
			}
			bkMustApply(t, b, tbl, ms...) // one partition per call: a batch in Cassandra
			ms = ms[:0]
		}
	}
	bkMustGet(t, b, tbl, key("eu", -1, -5, "ab"), abTS, bkRow("score", journal.Int(-49), "note", journal.String("eu")))

	sortedSeqs := slices.Clone(seqs)
	slices.Sort(sortedSeqs)
	sortedNames := slices.Clone(names)
	slices.Sort(sortedNames) // byte order: "B" < "a" < "ab" < "b" < "é"

	type ck struct {
		seq  int64
		name string
	}
	clustering := func(rows []StoredRow) []ck {
		var out []ck
		for _, r := range rows {
			out = append(out, ck{r.Values[1].Value.Int, r.Values[4].Value.Str})
		}
		return out
	}
	var wantAll []ck
	for _, s := range sortedSeqs {
		for _, n := range sortedNames {
			wantAll = append(wantAll, ck{s, n})
		}
	}
	eq := func(col string, v journal.Value) Filter { return Filter{Column: col, Value: v} }

	// By partition: clustering order.
	p, err := b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("region", journal.String("eu")), eq("shard", journal.Int(-1))}, Limit: 100})
	if err != nil || p.Next != "" {
		t.Fatalf("Select by partition: %v, next %q", err, p.Next)
	}
	if got := clustering(p.Rows); !slices.Equal(got, wantAll) {
		t.Errorf("Select by partition: order\n%v\nwant\n%v", got, wantAll)
	}
	for _, r := range p.Rows {
		if r.Values[0].Value.Str != "eu" || r.Values[3].Value.Int != -1 {
			t.Fatalf("Select by partition returned %s", bkShowRow(r.Values))
		}
	}
	// By partition and a clustering prefix.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("shard", journal.Int(1)), eq("seq", journal.Int(-5)), eq("region", journal.String("us"))}})
	if err != nil {
		t.Fatal(err)
	}
	var want []ck
	for _, n := range sortedNames {
		want = append(want, ck{-5, n})
	}
	if got := clustering(p.Rows); !slices.Equal(got, want) {
		t.Errorf("Select by partition and seq: %v, want %v", got, want)
	}
	// By partition and the second clustering column only.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("shard", journal.Int(1)), eq("name", journal.String("ab")), eq("region", journal.String("us"))}})
	if err != nil {
		t.Fatal(err)
	}
	want = want[:0]
	for _, s := range sortedSeqs {
		want = append(want, ck{s, "ab"})
	}
	if got := clustering(p.Rows); !slices.Equal(got, want) {
		t.Errorf("Select by partition and name: %v, want %v", got, want)
	}
	// By the full key.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("shard", journal.Int(1)), eq("name", journal.String("a")), eq("region", journal.String("us")), eq("seq", journal.Int(3))}})
	if err != nil || len(p.Rows) != 1 || p.Rows[0].Values[2].Value.Int != 32 {
		t.Errorf("Select by full key: %d rows, %v; want 1", len(p.Rows), err)
	}
	// By part of the partition key only: a scan; each partition in clustering order.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("region", journal.String("eu"))}, Limit: 1000})
	if err != nil || p.Next != "" || len(p.Rows) != 2*len(wantAll) {
		t.Fatalf("Select by region: %d rows, next %q, %v; want %d", len(p.Rows), p.Next, err, 2*len(wantAll))
	}
	byShard := map[int64][]StoredRow{}
	for i, r := range p.Rows {
		shard := r.Values[3].Value.Int
		if i > 0 && shard != p.Rows[i-1].Values[3].Value.Int && len(byShard[shard]) > 0 {
			t.Fatalf("Select by region: partition %d is not contiguous", shard)
		}
		byShard[shard] = append(byShard[shard], r)
	}
	for shard, rows := range byShard {
		if got := clustering(rows); !slices.Equal(got, wantAll) {
			t.Errorf("Select by region, shard %d: order %v", shard, got)
		}
	}
	// By a regular column: a scan.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("score", journal.Int(102))}})
	if err != nil || len(p.Rows) != 4 {
		t.Errorf("Select by score: %d rows, %v; want 4 (one per partition)", len(p.Rows), err)
	}
	for _, r := range p.Rows {
		if r.Values[1].Value.Int != 10 || r.Values[4].Value.Str != "a" {
			t.Errorf("Select by score returned %s", bkShowRow(r.Values))
		}
	}
	// By a regular column and a partition: only that partition.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("score", journal.Int(102)), eq("region", journal.String("us")), eq("shard", journal.Int(-1))}})
	if err != nil || len(p.Rows) != 1 || p.Rows[0].Values[0].Value.Str != "us" {
		t.Errorf("Select by score in a partition: %d rows, %v; want 1", len(p.Rows), err)
	}
	// A missing partition: nothing.
	p, err = b.Select(ctx, tbl, LevelGlobal, Query{Filters: []Filter{eq("region", journal.String("asia")), eq("shard", journal.Int(1))}})
	if err != nil || len(p.Rows) != 0 || p.Next != "" {
		t.Errorf("Select of a missing partition: %d rows, next %q, %v", len(p.Rows), p.Next, err)
	}
	bkMustBeAbsent(t, b, tbl, key("eu", 1, 4, "a"))
}

// pagingTable has 10 partitions of 25 rows.
func bkPagingTable(t *testing.T, b Backend) Table {
	tbl := bkMustCreateTable(t, b, Table{
		Keyspace:     bkTestKeyspace(t, b),
		Name:         "paged",
		Columns:      []Column{{"p", Text}, {"c", Int}, {"v", Text}},
		PartitionKey: []string{"p"},
		Clustering:   []string{"c"},
	})
	for p := range 10 {
		var ms []Mutation
		for c := range 25 {
			ms = append(ms, bkPut(bkRow("p", journal.String(fmt.Sprintf("p%d", p)), "c", journal.Int(int64(c))), int64(1+c), bkRow("v", journal.String(fmt.Sprint(c%2)))))
		}
		bkMustApply(t, b, tbl, ms...)
	}
	return tbl
}

// readAll follows the pages of q and returns the keys in order; it fails if a key comes twice or
// a page is larger than the limit.
func bkReadAll(t *testing.T, b Backend, tbl Table, q Query, maxCalls int) (keys []string, calls int) {
	t.Helper()
	seen := map[string]bool{}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultPageRows
	}
	for {
		calls++
		if calls > maxCalls {
			t.Fatalf("more than %d calls to read %+v", maxCalls, q)
		}
		p, err := b.Select(bkTestCtx(t), tbl, LevelLocal, q)
		if err != nil {
			t.Fatalf("Select page %d: %v", calls, err)
		}
		if len(p.Rows) > limit {
			t.Fatalf("page of %d rows, limit %d", len(p.Rows), limit)
		}
		for _, r := range p.Rows {
			k := fmt.Sprintf("%s/%d", r.Values[0].Value.Str, r.Values[1].Value.Int)
			if seen[k] {
				t.Fatalf("row %s returned twice", k)
			}
			seen[k] = true
			keys = append(keys, k)
		}
		if p.Next == "" {
			return keys, calls
		}
		q.Page = p.Next
	}
}

func testBackendPaging(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	tbl := bkPagingTable(t, b)

	keys, calls := bkReadAll(t, b, tbl, Query{Limit: 40}, 10)
	if len(keys) != 250 || calls < 7 {
		t.Errorf("scan at limit 40: %d rows in %d calls, want 250 in at least 7", len(keys), calls)
	}
	// Within each partition, clustering order.
	last := map[string]int{}
	for _, k := range keys {
		var p string
		var c int
		fmt.Sscanf(strings.Replace(k, "/", " ", 1), "%s %d", &p, &c)
		if prev, ok := last[p]; ok && c != prev+1 {
			t.Fatalf("partition %s: row %d after %d", p, c, prev)
		}
		last[p] = c
	}

	// One partition at limit 7.
	keys, _ = bkReadAll(t, b, tbl, Query{Filters: []Filter{{Column: "p", Value: journal.String("p3")}}, Limit: 7}, 10)
	if len(keys) != 25 || keys[0] != "p3/0" || keys[24] != "p3/24" {
		t.Errorf("partition at limit 7: %v", keys)
	}
	// A filter checked by musicd at limit 9.
	keys, _ = bkReadAll(t, b, tbl, Query{Filters: []Filter{{Column: "v", Value: journal.String("1")}}, Limit: 9}, 30)
	if len(keys) != 120 {
		t.Errorf("filter v=1 at limit 9: %d rows, want 120", len(keys))
	}
	// No token when nothing follows, also when the last page is exactly full.
	for _, q := range []Query{
		{Limit: 250},
		{Filters: []Filter{{Column: "p", Value: journal.String("p3")}}, Limit: 25},
		{Filters: []Filter{{Column: "p", Value: journal.String("p3")}, {Column: "c", Value: journal.Int(24)}}, Limit: 1},
	} {
		p, err := b.Select(ctx, tbl, LevelLocal, q)
		if err != nil || len(p.Rows) != q.Limit || p.Next != "" {
			t.Errorf("Select(%+v): %d rows, next %q, %v; want %d rows and no next", q, len(p.Rows), p.Next, err, q.Limit)
		}
	}
	// The default limit.
	p, err := b.Select(ctx, tbl, LevelLocal, Query{})
	if err != nil || len(p.Rows) != DefaultPageRows || p.Next == "" {
		t.Errorf("default limit: %d rows, next %q, %v; want %d and a next page", len(p.Rows), p.Next, err, DefaultPageRows)
	}
	// The limit may change from page to page.
	q := Query{Limit: 10}
	p1, err := b.Select(ctx, tbl, LevelLocal, q)
	if err != nil {
		t.Fatal(err)
	}
	q.Page, q.Limit = p1.Next, 300
	p2, err := b.Select(ctx, tbl, LevelLocal, q)
	if err != nil || len(p1.Rows)+len(p2.Rows) != 250 || p2.Next != "" {
		t.Errorf("limit 10 then 300: %d + %d rows, next %q, %v; want 250", len(p1.Rows), len(p2.Rows), p2.Next, err)
	}

	// Bad tokens.
	other, err := b.Select(ctx, tbl, LevelLocal, Query{Filters: []Filter{{Column: "v", Value: journal.String("0")}}, Limit: 3})
	if err != nil || other.Next == "" {
		t.Fatalf("Select v=0: next %q, %v", other.Next, err)
	}
	for _, tok := range []string{
		"!!!",
		"AAAA",
		"AQAAAAAAAAAAAAA",
		p1.Next[:len(p1.Next)-2],
		p1.Next + "A",
		other.Next, // another query's
	} {
		_, err := b.Select(ctx, tbl, LevelLocal, Query{Limit: 10, Page: tok})
		bkWantErr(t, fmt.Sprintf("Select with page token %q", tok), err, ErrInvalid)
	}
	_, err = b.Select(ctx, tbl, LevelLocal, Query{Limit: 10, Page: strings.Repeat("A", 20000)})
	bkWantErr(t, "Select with a huge page token", err, ErrInvalid)
}

func testBackendSparseFilter(t *testing.T, b Backend) {
	tbl := bkMustCreateTable(t, b, Table{
		Keyspace:     bkTestKeyspace(t, b),
		Name:         "sparse",
		Columns:      []Column{{"p", Text}, {"c", Int}, {"v", Text}},
		PartitionKey: []string{"p"},
		Clustering:   []string{"c"},
	})
	const n = 1300
	hits := map[int]bool{3: true, 1250: true}
	var ms []Mutation
	for c := range n {
		v := "miss"
		if hits[c] {
			v = "hit"
		}
		ms = append(ms, bkPut(bkRow("p", journal.String("only"), "c", journal.Int(int64(c))), 1, bkRow("v", journal.String(v))))
		if len(ms) == 200 || c == n-1 {
			bkMustApply(t, b, tbl, ms...)
			ms = ms[:0]
		}
	}
	for _, filters := range [][]Filter{
		{{Column: "v", Value: journal.String("hit")}},
		{{Column: "v", Value: journal.String("hit")}, {Column: "p", Value: journal.String("only")}},
	} {
		q := Query{Filters: filters, Limit: 10}
		p, err := b.Select(bkTestCtx(t), tbl, LevelLocal, q)
		if err != nil {
			t.Fatal(err)
		}
		// 1000 rows examined at most: the first hit, and a token to go on.
		if len(p.Rows) != 1 || p.Rows[0].Values[1].Value.Int != 3 || p.Next == "" {
			t.Errorf("filters %v: first page %d rows, next %q; want the row 3 and a token", filters, len(p.Rows), p.Next)
		}
		keys, calls := bkReadAll(t, b, tbl, q, 4)
		if !slices.Equal(keys, []string{"only/3", "only/1250"}) || calls < 2 {
			t.Errorf("filters %v: %v in %d calls, want [only/3 only/1250] in at least 2", filters, keys, calls)
		}
	}
}

func testBackendDroppedTable(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	ks := bkTestKeyspace(t, b)
	tbl := bkMustCreateTable(t, b, bkSimpleTable(ks, "gone"))
	keep := bkMustCreateTable(t, b, bkSimpleTable(ks, "kept"))
	k := bkRow("id", journal.String("k"))
	bkMustApply(t, b, tbl, bkPut(k, 1, bkRow("a", journal.String("x"))))
	bkMustApply(t, b, keep, bkPut(k, 1, bkRow("a", journal.String("y"))))
	bkMustGet(t, b, tbl, k, 1, bkRow("a", journal.String("x")))
	if _, err := b.Select(ctx, tbl, LevelGlobal, Query{}); err != nil {
		t.Fatal(err)
	}
	if err := b.DropTable(ctx, ks, tbl.Name); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.Get(ctx, tbl, LevelGlobal, k)
	bkWantErr(t, "Get of a dropped table", err, ErrNotFound)
	_, err = b.Select(ctx, tbl, LevelGlobal, Query{})
	bkWantErr(t, "Select of a dropped table", err, ErrNotFound)
	err = b.Apply(ctx, tbl, LevelGlobal, bkPut(k, 2, nil))
	bkWantErr(t, "Apply to a dropped table", err, ErrNotFound)
	// The other table is untouched.
	bkMustGet(t, b, keep, k, 1, bkRow("a", journal.String("y")))
	missing := bkSimpleTable(ks, "never")
	_, _, err = b.Get(ctx, missing, LevelGlobal, k)
	bkWantErr(t, "Get of a table never created", err, ErrNotFound)
}

// testBackendConcurrent writes one row and several rows from many goroutines with shuffled
// timestamps: the result is the newest write per column, whatever the interleaving.
func testBackendConcurrent(t *testing.T, b Backend) {
	tbl := bkMustCreateTable(t, b, bkSimpleTable(bkTestKeyspace(t, b), "conc"))
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Timestamps interleave across workers; worker w writes column b of row "one" and
				// its own row.
				ts := int64((each-i)*workers + w + 1)
				ms := []Mutation{
					bkUpdate(bkRow("id", journal.String("one")), ts, bkRow("b", journal.Int(ts))),
					bkPut(bkRow("id", journal.String(fmt.Sprintf("w%d", w))), ts, bkRow("a", journal.String(fmt.Sprint(ts)))),
				}
				if err := b.Apply(context.Background(), tbl, LevelLocal, ms...); err != nil {
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
	newest := int64(each*workers + workers)
	bkMustGet(t, b, tbl, bkRow("id", journal.String("one")), newest, bkRow("b", journal.Int(newest)))
	for w := range workers {
		ts := int64(each*workers + w + 1)
		bkMustGet(t, b, tbl, bkRow("id", journal.String(fmt.Sprintf("w%d", w))), ts, bkRow("a", journal.String(fmt.Sprint(ts))))
	}
}

// testBackendRecreate drops tables and creates them again under the same name, with the same
// definition and with others: the new table starts empty and takes writes. (Cassandra 2.1 once
// reported such writes as applied and stored nothing.)
func testBackendRecreate(t *testing.T, b Backend) {
	ctx := bkTestCtx(t)
	ks := bkTestKeyspace(t, b)
	orig := bkSimpleTable(ks, "again")
	k := func(s string) journal.Row { return bkRow("id", journal.String(s)) }
	recreate := func(tbl Table) {
		t.Helper()
		if err := b.DropTable(ctx, ks, tbl.Name); err != nil {
			t.Fatalf("DropTable: %v", err)
		}
		bkMustCreateTable(t, b, tbl)
	}
	onlyRow := func(tbl Table, key journal.Row) {
		t.Helper()
		p, err := b.Select(ctx, tbl, LevelGlobal, Query{})
		if err != nil || len(p.Rows) != 1 || !bkSameValue(p.Rows[0].Values[0].Value, key[0].Value) {
			t.Fatalf("Select all: %d rows, %v; want only %s", len(p.Rows), err, bkShowRow(key))
		}
	}

	bkMustCreateTable(t, b, orig)
	// Every kind of statement once, so that a backend preparing them has them ready.
	bkMustApply(t, b, orig, bkPut(k("k1"), 10, bkRow("a", journal.String("first"))))
	bkMustApply(t, b, orig, bkUpdate(k("k1"), 11, bkRow("b", journal.Int(1))), bkDel(k("k0"), 11))
	bkMustGet(t, b, orig, k("k1"), 11, bkRow("a", journal.String("first"), "b", journal.Int(1)))
	onlyRow(orig, k("k1"))

	// The same definition.
	recreate(orig)
	bkMustBeAbsent(t, b, orig, k("k1"))
	bkMustApply(t, b, orig, bkPut(k("k2"), 20, bkRow("a", journal.String("second"))))
	bkMustApply(t, b, orig, bkUpdate(k("k2"), 21, bkRow("b", journal.Int(2))), bkUpdate(k("k2"), 22, bkRow("b", journal.Int(3))))
	bkMustGet(t, b, orig, k("k2"), 22, bkRow("a", journal.String("second"), "b", journal.Int(3)))
	onlyRow(orig, k("k2"))
	bkMustApply(t, b, orig, bkDel(k("k2"), 23))
	bkMustBeAbsent(t, b, orig, k("k2"))

	// The same column names with another type: the same statements, but for another table.
	retyped := bkSimpleTable(ks, "again")
	retyped.Columns[2].Type = Bigint
	recreate(retyped)
	bkWantErr(t, "Apply with the definition of the dropped table", b.Apply(ctx, orig, LevelGlobal, bkPut(k("k3"), 30, nil)), ErrNotFound)
	bkMustApply(t, b, retyped, bkPut(k("k3"), 30, bkRow("a", journal.String("third"), "b", journal.Int(1<<40))))
	bkMustGet(t, b, retyped, k("k3"), 30, bkRow("a", journal.String("third"), "b", journal.Int(1<<40)))
	onlyRow(retyped, k("k3"))

	// One more column.
	wider := bkSimpleTable(ks, "again")
	wider.Columns = append(wider.Columns, Column{"c", Text})
	recreate(wider)
	bkMustApply(t, b, wider, bkPut(k("k4"), 40, bkRow("a", journal.String("fourth"), "c", journal.String("more"))))
	bkMustGet(t, b, wider, k("k4"), 40, bkRow("a", journal.String("fourth"), "c", journal.String("more")))
	onlyRow(wider, k("k4"))

	// Back to the first definition, several times in a row.
	for i := range 3 {
		recreate(orig)
		key := k(fmt.Sprintf("k5_%d", i))
		bkMustApply(t, b, orig, bkPut(key, 50, bkRow("a", journal.String("fifth"))))
		bkMustGet(t, b, orig, key, 50, bkRow("a", journal.String("fifth")))
		onlyRow(orig, key)
	}
	if got, err := b.Table(ctx, ks, orig.Name); err != nil || !sameTable(got, orig) {
		t.Errorf("Table after the last create: %+v, %v; want %+v", got, err, orig)
	}
}

// bkPos is the position of a row of the moving table: partition p, clustering (c1, c2).
type bkPos struct {
	p      string
	c1, c2 int64
}

func (a bkPos) less(b bkPos) bool { // clustering order within a partition
	return a.c1 < b.c1 || (a.c1 == b.c1 && a.c2 < b.c2)
}

func (a bkPos) key() journal.Row {
	return bkRow("p", journal.String(a.p), "c1", journal.Int(a.c1), "c2", journal.Int(a.c2))
}

// testBackendPagingUnderWrites pages through selects while rows are inserted and deleted
// between the pages, around the last row returned: behind it, at it, just ahead of it, and the
// rest of its partition. Every row present from start to end is returned exactly once, in order;
// rows inserted behind the last row returned and rows deleted before being reached never are.
func testBackendPagingUnderWrites(t *testing.T, b Backend) {
	ks := bkTestKeyspace(t, b)
	for si, sc := range []struct {
		name    string
		filters []Filter
		limit   int
		scan    bool
	}{
		{name: "partition", filters: []Filter{{Column: "p", Value: journal.String("p1")}}, limit: 7},
		{name: "clustering prefix", filters: []Filter{{Column: "p", Value: journal.String("p2")}, {Column: "c1", Value: journal.Int(2)}}, limit: 3},
		{name: "scan", limit: 9, scan: true},
		{name: "filtered scan", filters: []Filter{{Column: "v", Value: journal.String("1")}}, limit: 4, scan: true},
	} {
		t.Run(sc.name, func(t *testing.T) {
			tbl := bkMustCreateTable(t, b, Table{
				Keyspace:     ks,
				Name:         fmt.Sprintf("moving%d", si),
				Columns:      []Column{{"p", Text}, {"c1", Int}, {"c2", Int}, {"v", Text}},
				PartitionKey: []string{"p"},
				Clustering:   []string{"c1", "c2"},
			})
			ts := int64(1)
			value := func(pos bkPos) journal.Value { return journal.String(fmt.Sprint((pos.c2 / 10) % 2)) }
			matches := func(pos bkPos, v journal.Value) bool {
				for _, f := range sc.filters {
					switch f.Column {
					case "p":
						if pos.p != f.Value.Str {
							return false
						}
					case "c1":
						if pos.c1 != f.Value.Int {
							return false
						}
					case "v":
						if v.Str != f.Value.Str {
							return false
						}
					}
				}
				return true
			}
			// 4 partitions of 4 x 10 rows; c2 in steps of 10 leaves room for rows in between.
			present := map[bkPos]journal.Value{}
			original := map[bkPos]bool{}
			for p := range 4 {
				var ms []Mutation
				for c1 := range int64(4) {
					for c2 := int64(0); c2 < 100; c2 += 10 {
						pos := bkPos{fmt.Sprintf("p%d", p), c1, c2}
						ms = append(ms, bkPut(pos.key(), ts, bkRow("v", value(pos))))
						present[pos], original[pos] = value(pos), true
					}
				}
				bkMustApply(t, b, tbl, ms...)
			}
			touched := map[bkPos]bool{}  // deleted at some point: not required
			deletedAt := map[bkPos]int{} // page after which a row was deleted (and not put again)
			behind := map[bkPos]bool{}   // inserted behind the last row returned
			put := func(pos bkPos, v journal.Value) {
				ts++
				bkMustApply(t, b, tbl, bkPut(pos.key(), ts, bkRow("v", v)))
				present[pos] = v
				delete(deletedAt, pos)
			}
			del := func(pos bkPos, page int) {
				ts++
				bkMustApply(t, b, tbl, bkDel(pos.key(), ts))
				if _, ok := present[pos]; ok {
					delete(present, pos)
					touched[pos] = true
					deletedAt[pos] = page
				}
			}

			q := Query{Filters: sc.filters, Limit: sc.limit}
			seen := map[bkPos]int{}
			var order []bkPos
			pages := 0
			for page := 1; ; page++ {
				pages = page
				if page > 200 {
					t.Fatalf("more than 200 pages")
				}
				p, err := b.Select(bkTestCtx(t), tbl, LevelLocal, q)
				if err != nil {
					t.Fatalf("page %d: %v", page, err)
				}
				if len(p.Rows) > sc.limit {
					t.Fatalf("page %d: %d rows, limit %d", page, len(p.Rows), sc.limit)
				}
				for _, r := range p.Rows {
					pos := bkPos{r.Values[0].Value.Str, r.Values[1].Value.Int, r.Values[2].Value.Int}
					switch {
					case seen[pos] > 0:
						t.Errorf("page %d: row %v returned again (first on page %d)", page, pos, seen[pos])
					case behind[pos]:
						t.Errorf("page %d: row %v, inserted behind the last row returned, returned", page, pos)
					case deletedAt[pos] > 0:
						t.Errorf("page %d: row %v, deleted after page %d, returned", page, pos, deletedAt[pos])
					case !matches(pos, r.Values[3].Value):
						t.Errorf("page %d: row %v (v=%s) does not match the filters", page, pos, bkShowValue(r.Values[3].Value))
					}
					seen[pos] = page
					order = append(order, pos)
				}
				if p.Next == "" {
					break
				}
				q.Page = p.Next
				if len(p.Rows) == 0 {
					continue
				}
				last := p.Rows[len(p.Rows)-1]
				l := bkPos{last.Values[0].Value.Str, last.Values[1].Value.Int, last.Values[2].Value.Int}
				// The last row returned goes, and rows behind it come (odd pages) or go (even
				// pages): a count of rows from some earlier position would now be off.
				del(l, page)
				if page%2 == 1 {
					for _, d := range []int64{1, 2} {
						pos := bkPos{l.p, l.c1, l.c2 - d}
						put(pos, journal.String("1"))
						behind[pos] = true
					}
				} else {
					del(bkPos{l.p, l.c1, l.c2 - 10}, page)
				}
				// Ahead, past the next row: one row goes (never to be returned), one comes (may
				// be returned).
				del(bkPos{l.p, l.c1, l.c2 + 20}, page)
				put(bkPos{l.p, l.c1, l.c2 + 15}, journal.String("1"))
				if sc.scan && page == 3 {
					// The rest of the partition goes.
					for pos := range present {
						if pos.p == l.p && l.less(pos) {
							del(pos, page)
						}
					}
				}
			}

			// Every row present throughout, and matching, was returned exactly once.
			for pos := range original {
				if !touched[pos] && matches(pos, present[pos]) && seen[pos] == 0 {
					t.Errorf("row %v, present throughout, not returned", pos)
				}
			}
			// In order: clustering order within a partition, each partition in one run.
			done := map[string]bool{}
			for i, pos := range order {
				if i == 0 {
					continue
				}
				prev := order[i-1]
				switch {
				case pos.p == prev.p && !prev.less(pos):
					t.Errorf("row %v returned after %v", pos, prev)
				case pos.p != prev.p:
					done[prev.p] = true
					if done[pos.p] {
						t.Errorf("partition %s returned again after %s", pos.p, prev.p)
					}
				}
			}
			if !sc.scan && len(order) > 0 && order[0].p != sc.filters[0].Value.Str {
				t.Errorf("rows of partition %s returned", order[0].p)
			}
			t.Logf("%d rows in %d pages", len(order), pages)
		})
	}
}
