package binlog

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/musicd/musicd/journal"
)

// referenceText is the plain decoding of character data (see text): text and textString must give
// the same values, with and without their ASCII fast paths.
func referenceText(raw []byte, collation uint64) journal.Value {
	switch {
	case collation == binaryCollation:
		return journal.Bytes(raw)
	case isLatin1(collation):
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
			unsigned: []bool{false, true, false}, collation: []uint64{0, 0, 45},
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

// The capture's own decoding of row images (imageRow) gives exactly the journal rows that
// go-mysql's decoding converted by value gives (which TestCaptureTypesExactly holds to the values
// written), for real events of a table with a column of every type it decodes: integers of each
// width signed and unsigned at their extremes and at random, FLOAT, DOUBLE, CHAR and VARCHAR
// with 1- and 2-byte lengths, TEXT and BLOB of each length size, BINARY with trailing zeros,
// latin1 beyond ASCII, NULLs; inserts, updates and deletes. Every image cut short is an error,
// never a panic or a row.
func TestImageRowMatchesGoMySQL(t *testing.T) {
	env := newCaptureEnv(t, 0)
	tbl := env.db + ".fast"
	env.exec(`CREATE TABLE ` + tbl + ` (
		id INT PRIMARY KEY, ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
		mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
		f FLOAT, d DOUBLE, c4 CHAR(4) CHARACTER SET utf8mb4, c100 CHAR(100) CHARACTER SET utf8mb4,
		vc VARCHAR(20) CHARACTER SET utf8mb4, vc300 VARCHAR(300) CHARACTER SET utf8mb4,
		l1 VARCHAR(20) CHARACTER SET latin1, lc CHAR(3) CHARACTER SET latin1,
		tt TINYTEXT, tx TEXT, mt MEDIUMTEXT CHARACTER SET latin1, lt LONGTEXT,
		bin BINARY(4), vb VARBINARY(300), tb TINYBLOB, bl BLOB, mb MEDIUMBLOB, lb LONGBLOB
	) DEFAULT CHARSET=utf8mb4`)
	start, err := currentPosition(env.conn, env.src.Flavor)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(7, 11))
	ints := func(bits uint) (int64, uint64) {
		switch rnd.IntN(4) {
		case 0:
			return -1 << (bits - 1), 1<<bits - 1 // extremes
		case 1:
			return 1<<(bits-1) - 1, 0
		}
		u := rnd.Uint64() >> (64 - bits)
		return int64(u<<(64-bits)) >> (64 - bits), u
	}
	str := func(n int, alphabet string) string {
		r := []rune(alphabet)
		var b strings.Builder
		for range rnd.IntN(n + 1) {
			b.WriteRune(r[rnd.IntN(len(r))])
		}
		return b.String()
	}
	blob := func(n int) []byte {
		b := make([]byte, rnd.IntN(n+1))
		for i := range b {
			b[i] = byte(rnd.IntN(256))
		}
		return b
	}
	const rows = 60
	for id := 1; id <= rows; id++ {
		big := 300
		if id%20 == 1 {
			big = 70000 // lengths of 3 bytes' worth
		}
		args := []any{id}
		for _, bits := range []uint{8, 16, 24, 32, 64} {
			s, u := ints(bits)
			args = append(args, s, u)
		}
		args = append(args, rnd.Float32()*1e6-5e5, rnd.NormFloat64()*1e300,
			str(4, "aé😀"), str(100, "xyz✓"), str(20, "ab ü"), str(300, "q😀"),
			str(20, "aé€‰"), str(3, "ÿ€"),
			str(255, "t"), str(3000, "te✓"), str(big, "mé"), str(300, "l"),
			[]byte{byte(id), 0, 0, 0}[:1+id%4], blob(300), blob(255), blob(3000), blob(big), blob(100))
		marks := strings.TrimSuffix(strings.Repeat("?, ", len(args)), ", ")
		if id%7 == 0 { // a row of NULLs but its key
			args = append(args[:1], make([]any, len(args)-1)...)
		}
		env.exec("INSERT INTO "+tbl+" VALUES ("+marks+")", args...)
	}
	env.exec("UPDATE " + tbl + " SET i = i DIV 2, vc = 'updated', bl = NULL WHERE id % 3 = 0")
	env.exec("DELETE FROM " + tbl + " WHERE id % 5 = 0")

	host, portStr, _ := net.SplitHostPort(env.src.Addr)
	port, _ := strconv.Atoi(portStr)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: env.src.ServerID, Flavor: env.src.Flavor, Host: host, Port: uint16(port), User: env.src.User, Password: env.src.Password,
		UseDecimal: true, TimestampStringLocation: time.UTC, RowsEventDecodeFunc: decodeRows, MaxReconnectAttempts: 1, Logger: discard(),
	})
	defer syncer.Close()
	gset, err := mysql.ParseMariadbGTIDSet(start)
	if err != nil {
		t.Fatal(err)
	}
	st, err := syncer.StartSyncGTID(gset)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := rows + rows/3 + rows/5 // inserts, updates, deletes
	images, seen := 0, 0
	for seen < want {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			t.Fatalf("after %d of %d rows: %v", seen, want, err)
		}
		e, ok := ev.Event.(*replication.RowsEvent)
		if !ok || string(e.Table.Schema) != env.db {
			continue
		}
		s, err := newTableSchema(e.Table)
		if err != nil {
			t.Fatal(err)
		}
		if !s.fast {
			t.Fatalf("table %s: not decoded by imageRow (types %v)", s.table, s.types)
		}
		imgs, ok := deferredImages(e)
		if !ok {
			t.Fatalf("rows event %v without deferred images", ev.Header.EventType)
		}
		var fields fieldSlab
		var ours []journal.Row
		for data := imgs.data[imgs.pos:]; len(data) > 0; {
			r, k, n, bound, err := s.imageRow(data, true, &fields)
			if err != nil {
				t.Fatal(err)
			}
			// The bound holds for the row and for its key, as the capture uses it for both.
			for _, row := range []journal.Row{r, k} {
				if size := journal.EncodedSize(&journal.Entry{After: row}) - journal.EncodedSize(&journal.Entry{}); size > bound {
					t.Fatalf("row %v encodes to %d bytes, over the bound %d", row, size, bound)
				}
			}
			for range 100 { // shorter images fail
				cut := rnd.IntN(n)
				if _, _, _, _, err := s.imageRow(data[:cut], true, &fields); !errors.Is(err, errTruncated) {
					t.Fatalf("image of %d bytes cut to %d: %v", n, cut, err)
				}
			}
			ours = append(ours, r, k)
			data = data[n:]
			images++
		}
		if err := goMySQLRows(e, imgs); err != nil {
			t.Fatal(err)
		}
		if len(ours) != 2*len(e.Rows) {
			t.Fatalf("%d images decoded, go-mysql decoded %d", len(ours)/2, len(e.Rows))
		}
		for i, values := range e.Rows {
			r, k, err := s.rowKey(values, true, &fields)
			if err != nil {
				t.Fatal(err)
			}
			if !sameRow(ours[2*i], r) || !sameRow(ours[2*i+1], k) {
				t.Fatalf("image %d:\nimageRow %+v key %+v\ngo-mysql %+v key %+v", i, ours[2*i], ours[2*i+1], r, k)
			}
		}
		if ev.Header.EventType == replication.UPDATE_ROWS_EVENTv1 {
			seen += len(e.Rows) / 2
		} else {
			seen += len(e.Rows)
		}
	}
	if images != rows+2*(rows/3)+rows/5 {
		t.Errorf("%d images compared", images)
	}
}

func sameRow(a, b journal.Row) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Value.Kind != b[i].Value.Kind || !a[i].Value.Equal(b[i].Value) {
			return false
		}
	}
	return true
}
