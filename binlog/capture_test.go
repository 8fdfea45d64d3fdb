package binlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// captureEnv is a database of the test's own on site a's MariaDB, an embedded journal, and a
// capture of that database into it.
type captureEnv struct {
	t     *testing.T
	db    string
	src   SourceConfig
	store journal.Store
	conn  *client.Conn
	cap   *Capture
	pace  time.Duration // writeLoad's pause after each transaction
}

func newCaptureEnv(t *testing.T, chunk int) *captureEnv {
	t.Helper()
	addr := testenv.MariaDBA(t)
	env := &captureEnv{t: t, db: testenv.UniqueName("cap_")}
	env.src = SourceConfig{
		Name: "a", Addr: addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		ServerID: 5000 + rand.Uint32N(100000),
		Tables:   policies.Tables{{Match: env.db + ".skip_*", Mode: policies.ModeOff}, {Match: env.db + ".*", Mode: policies.ModeAsync}},
	}.WithDefaults()
	var err error
	env.conn, err = Connect(context.Background(), env.src)
	if err != nil {
		t.Fatal(err)
	}
	env.exec("SET NAMES utf8mb4")
	env.exec("CREATE DATABASE " + env.db)
	t.Cleanup(func() {
		env.exec("DROP DATABASE IF EXISTS " + env.db)
		env.conn.Close()
	})
	env.store, err = journal.OpenEmbedded(filepath.Join(t.TempDir(), "journal"), discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.store.Close() })
	env.cap = NewCapture(CaptureConfig{Source: env.src, Site: "a", ChunkEntries: chunk}, env.store, journal.NewClock(time.Now, 0), discard())
	return env
}

func (env *captureEnv) exec(q string, args ...any) {
	env.t.Helper()
	if _, err := env.conn.Execute(q, args...); err != nil {
		env.t.Fatalf("%s: %v", q, err)
	}
}

// start runs the capture under epoch until the returned stop is called; stop returns Run's error.
func (env *captureEnv) start(epoch uint64) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- env.cap.Run(ctx, epoch) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			env.t.Fatal("capture did not stop")
			return nil
		}
	}
	env.t.Cleanup(func() { _ = stop() })
	return stop
}

// entries reads the whole stream.
func (env *captureEnv) entries() []journal.Entry {
	env.t.Helper()
	var out []journal.Entry
	r := journal.NewReader(env.store, env.cap.Stream(), 1, 1000)
	for {
		e, ok, err := r.Next(context.Background())
		if err != nil {
			env.t.Fatal(err)
		}
		if !ok {
			return out
		}
		out = append(out, e)
	}
}

// rowEntries returns the data entries of table (inserts, updates, deletes, DDL), without the
// rows an initial snapshot read.
func (env *captureEnv) rowEntries(table string) []journal.Entry {
	var out []journal.Entry
	for _, e := range env.entries() {
		if e.Table == table && e.Op != journal.OpMark && e.Op != journal.OpRead {
			out = append(out, e)
		}
	}
	return out
}

// waitRows waits until table has n data entries in the journal.
func (env *captureEnv) waitRows(table string, n int) []journal.Entry {
	env.t.Helper()
	var got []journal.Entry
	testenv.WaitFor(env.t, 30*time.Second, fmt.Sprintf("%d entries of %s in the journal", n, table), func() bool {
		got = env.rowEntries(table)
		return len(got) >= n
	})
	return got
}

// waitStarted waits for the capture's start mark (entry 1).
func (env *captureEnv) waitStarted() {
	env.t.Helper()
	testenv.WaitFor(env.t, 30*time.Second, "the capture to start", func() bool {
		h, err := env.store.Head(context.Background(), env.cap.Stream())
		return err == nil && h.Seq >= 1
	})
}

func value(e journal.Entry, row journal.Row, col string) journal.Value {
	for _, f := range row {
		if f.Name == col {
			return f.Value
		}
	}
	return journal.Value{Kind: 255}
}

// typesTable creates table types with a column of every MariaDB type.
func (env *captureEnv) typesTable() {
	env.exec(`CREATE TABLE ` + env.db + `.types (
		id INT PRIMARY KEY,
		ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED,
		i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
		dec65 DECIMAL(65,30), dec10 DECIMAL(10,2), f FLOAT, d DOUBLE, b1 BIT(1), b64 BIT(64),
		dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(3), yr YEAR,
		c4 CHAR(4) CHARACTER SET utf8mb4, vc VARCHAR(100) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4,
		l1 VARCHAR(20) CHARACTER SET latin1, lt TEXT CHARACTER SET latin1,
		bin BINARY(4), vb VARBINARY(10), bl BLOB,
		en ENUM('red','green','blue'), st SET('a','b','c','d'), js JSON, g GEOMETRY, n INT NULL
	) DEFAULT CHARSET=utf8mb4`)
}

// typesRow inserts a row of extreme values into types (the session's time zone UTC).
func (env *captureEnv) typesRow(id int) {
	env.exec("SET time_zone = '+00:00'")
	env.exec(`INSERT INTO ` + env.db + `.types VALUES (` + strconv.Itoa(id) + `,
		-128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
		'-12345678901234567890123456789012345.123456789012345678901234567890', 0.10, 1.5, -2.2250738585072014e-308, b'1', b'1111111111111111111111111111111111111111111111111111111111111111',
		'2024-02-29', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.123456', '-838:59:59.000', 2155,
		'ab', 'ünïcødé ✓ 😀', REPEAT('x', 300), 'café €', 'naïve ‰',
		X'00010200', X'ff00', X'deadbeef00',
		'green', 'a,c,d', '{"k": [1, 2.5, "s"], "n": null}', ST_GeomFromText('POINT(1 2)'), NULL)`)
}

// Every MariaDB type round-trips exactly: what was written is what the journal holds.
func TestCaptureTypesExactly(t *testing.T) {
	env := newCaptureEnv(t, 1000)
	env.typesTable()
	stop := env.start(1)
	env.waitStarted()
	env.typesRow(1)
	rows := env.waitRows("types", 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	e := rows[0]
	if e.Op != journal.OpInsert || e.Database != env.db || e.Before != nil || len(e.Key) != 1 || e.Key[0].Name != "id" {
		t.Fatalf("entry %+v", e)
	}
	dec := func(s string) journal.Value { return journal.Decimal(s) }
	tmp := func(s string) journal.Value { return journal.Value{Kind: journal.KindTemporal, Str: s} }
	want := map[string]journal.Value{
		"ti": journal.Int(-128), "tiu": journal.Uint(255), "si": journal.Int(-32768), "siu": journal.Uint(65535),
		"mi": journal.Int(-8388608), "miu": journal.Uint(16777215), "i": journal.Int(-2147483648), "iu": journal.Uint(4294967295),
		"bi": journal.Int(-9223372036854775808), "biu": journal.Uint(18446744073709551615),
		"dec65": dec("-12345678901234567890123456789012345.123456789012345678901234567890"), "dec10": dec("0.10"),
		"f": {Kind: journal.KindFloat32, Float: 1.5}, "d": journal.Float64(-2.2250738585072014e-308),
		"b1": journal.Uint(1), "b64": journal.Uint(18446744073709551615),
		"dt": tmp("2024-02-29"), "dtm": tmp("9999-12-31 23:59:59.999999"), "ts": tmp("2038-01-19 03:14:07.123456"),
		"tm": tmp("-838:59:59.000"), "yr": tmp("2155"),
		"c4": journal.String("ab"), "vc": journal.String("ünïcødé ✓ 😀"), "tx": journal.String(strings.Repeat("x", 300)),
		"l1": journal.String("café €"), "lt": journal.String("naïve ‰"),
		"bin": journal.Bytes([]byte{0, 1, 2, 0}), "vb": journal.Bytes([]byte{0xff, 0}), "bl": journal.Bytes([]byte{0xde, 0xad, 0xbe, 0xef, 0}),
		"en": journal.String("green"), "st": journal.String("a,c,d"),
		"n": journal.Null(),
	}
	for col, w := range want {
		if got := value(e, e.After, col); !got.Equal(w) {
			t.Errorf("%s: got %+v, want %+v", col, got, w)
		}
	}
	// MariaDB stores JSON as text: it arrives as the text MariaDB kept.
	if js := value(e, e.After, "js"); js.Kind != journal.KindString || !strings.Contains(js.Str, `"k"`) {
		t.Errorf("js: %+v", js)
	}
	// GEOMETRY: SRID (4 bytes) then WKB of POINT(1 2).
	if g := value(e, e.After, "g"); g.Kind != journal.KindBytes || len(g.Bytes) != 25 {
		t.Errorf("g: %+v", g)
	}
}

// Rows written before and after ALTER TABLE decode with their own columns, even though the
// capture reads them all after the last ALTER.
func TestCaptureAcrossAlterTable(t *testing.T) {
	env := newCaptureEnv(t, 1000)
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, a VARCHAR(20))")
	env.exec("INSERT INTO " + tbl + " VALUES (0, 'before start')")
	stop := env.start(1)
	env.waitStarted()
	if err := stop(); err != nil { // stopped: everything below is read later, after the last ALTER
		t.Fatal(err)
	}
	env.exec("INSERT INTO " + tbl + " VALUES (1, 'one')")
	env.exec("ALTER TABLE " + tbl + " ADD COLUMN b INT DEFAULT 7")
	env.exec("INSERT INTO " + tbl + " VALUES (2, 'two', 22)")
	env.exec("ALTER TABLE " + tbl + " DROP COLUMN a")
	env.exec("INSERT INTO " + tbl + " VALUES (3, 33)")
	env.exec("ALTER TABLE " + tbl + " MODIFY COLUMN b BIGINT UNSIGNED")
	env.exec("INSERT INTO " + tbl + " VALUES (4, 18446744073709551615)")
	env.exec("ALTER TABLE " + tbl + " RENAME COLUMN b TO c")
	env.exec("UPDATE " + tbl + " SET c = 5 WHERE id = 4")
	env.exec("CREATE TABLE " + env.db + ".skip_me (id INT PRIMARY KEY)")
	env.exec("INSERT INTO " + env.db + ".skip_me VALUES (1)")

	stop = env.start(2)
	got := env.waitRows("t", 9)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	cols := func(r journal.Row) string {
		var n []string
		for _, f := range r {
			n = append(n, f.Name)
		}
		return strings.Join(n, ",")
	}
	// A DDL entry carries the table's columns after it: from the TABLE_MAP of the insert before
	// the first ALTER (the capture started after the CREATE), then each ALTER applied.
	want := []struct {
		op   journal.Op
		cols string
		stmt string
	}{
		{journal.OpInsert, "id,a", ""},
		{journal.OpDDL, "id int,a varchar(20),b int", "ADD COLUMN b"},
		{journal.OpInsert, "id,a,b", ""},
		{journal.OpDDL, "id int,b int", "DROP COLUMN a"},
		{journal.OpInsert, "id,b", ""},
		{journal.OpDDL, "id int,b bigint unsigned", "MODIFY COLUMN b"},
		{journal.OpInsert, "id,b", ""},
		{journal.OpDDL, "id int,c bigint unsigned", "RENAME COLUMN b TO c"},
		{journal.OpUpdate, "id,c", ""},
	}
	for i, w := range want {
		e := got[i]
		c := cols(e.After)
		if w.op == journal.OpDDL {
			c = spelledColumns(e.Columns)
		}
		if e.Op != w.op || c != w.cols || !strings.Contains(e.Statement, w.stmt) {
			t.Errorf("entry %d: %s %q %q, want %s %q %q", i, e.Op, c, e.Statement, w.op, w.cols, w.stmt)
		}
	}
	if v := value(got[4], got[4].After, "b"); !v.Equal(journal.Int(33)) {
		t.Errorf("row 3: b = %+v", v)
	}
	if v := value(got[6], got[6].After, "b"); !v.Equal(journal.Uint(18446744073709551615)) {
		t.Errorf("row 4: b = %+v (BIGINT UNSIGNED after MODIFY)", v)
	}
	if v := value(got[8], got[8].Before, "c"); !v.Equal(journal.Uint(18446744073709551615)) {
		t.Errorf("update before image: %+v", v)
	}
	if got[2].SchemaVersion == got[0].SchemaVersion || got[6].SchemaVersion == got[4].SchemaVersion {
		t.Error("schema version did not change with the table's shape")
	}
	if n := len(env.rowEntries("skip_me")); n != 0 {
		t.Errorf("%d entries of an excluded table", n)
	}
}

// The columns on DDL entries are spelled as information_schema's COLUMN_TYPE (integer display
// widths aside) for every type: a CREATE TABLE's from the statement, an ALTER's from the columns
// of the table's last TABLE_MAP event (a row written in between) with the change applied.
// Statements the capture cannot follow leave the columns out.
func TestDDLColumns(t *testing.T) {
	env := newCaptureEnv(t, 1000)
	stop := env.start(1)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	env.waitStarted()
	env.typesTable()
	env.typesRow(1)
	env.exec("ALTER TABLE " + env.db + ".types ADD COLUMN z DECIMAL(5,1) UNSIGNED FIRST, CHANGE COLUMN n n2 VARCHAR(7) CHARACTER SET utf8mb4 AFTER id")
	env.exec("CREATE TABLE " + env.db + ".other LIKE " + env.db + ".types")
	env.exec("RENAME TABLE " + env.db + ".other TO " + env.db + ".other2")
	env.exec("DROP TABLE " + env.db + ".other2")
	widths := regexp.MustCompile(`^(tinyint|smallint|mediumint|int|bigint|year)\(\d+\)`)
	infoSchema := func(table string) string {
		r, err := env.conn.Execute(`SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS
			WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, env.db, table)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for i := range r.RowNumber() {
			name, _ := r.GetString(i, 0)
			typ, _ := r.GetString(i, 1)
			out = append(out, name+" "+widths.ReplaceAllString(typ, "$1"))
		}
		return strings.Join(out, ",")
	}
	testenv.WaitFor(t, 30*time.Second, "the DDL entries", func() bool {
		n := 0
		for _, e := range env.entries() {
			if e.Op == journal.OpDDL {
				n++
			}
		}
		return n >= 5
	})
	var ddl []journal.Entry
	for _, e := range env.entries() {
		if e.Op == journal.OpDDL {
			ddl = append(ddl, e)
		}
	}
	// The table as created, and as altered: compare the final definition with what the server
	// says now, and the created one by undoing the ALTER on the server's spelling.
	final := infoSchema("types")
	if got := spelledColumns(ddl[1].Columns); got != final {
		t.Errorf("columns after the ALTER:\n got %s\nwant %s", got, final)
	}
	created := strings.Replace(strings.Replace(final, "z decimal(5,1) unsigned,", "", 1), "n2 varchar(7),", "", 1) + ",n int"
	if got := spelledColumns(ddl[0].Columns); got != created {
		t.Errorf("columns of the CREATE TABLE:\n got %s\nwant %s", got, created)
	}
	if got := spelledColumns(ddl[2].Columns); ddl[2].Table != "other" || got != final {
		t.Errorf("CREATE TABLE LIKE: %s %s", ddl[2].Table, got)
	}
	if got := spelledColumns(ddl[3].Columns); got != final {
		t.Errorf("RENAME TABLE: %s", got)
	}
	if ddl[4].Columns != nil || !strings.HasPrefix(ddl[4].Statement, "DROP TABLE") {
		t.Errorf("DROP TABLE: %+v", ddl[4])
	}
}

// Transactions are journaled as one batch each, large ones in chunks; after restarts at any
// point, every transaction is in the journal exactly once, in commit order.
func TestCaptureRestartsLoseAndRepeatNothing(t *testing.T) {
	env := newCaptureEnv(t, 7) // small chunks: transactions of 20 rows span 3 batches
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, tx INT, k INT)")
	stop := env.start(1)
	env.waitStarted()
	const txs, rowsPerTx = 30, 20
	id := 0
	for tx := range txs {
		env.exec("BEGIN")
		for k := range rowsPerTx {
			id++
			env.exec("INSERT INTO "+tbl+" VALUES (?, ?, ?)", id, tx, k)
		}
		env.exec("COMMIT")
		if tx%5 == 2 {
			// Stop and restart the capture (with a new epoch) while transactions go on.
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			stop = env.start(uint64(tx + 2))
		}
	}
	got := env.waitRows("t", txs*rowsPerTx)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkTransactions(t, got, txs, rowsPerTx)
}

// checkTransactions checks that entries are txs transactions of n inserts each, in order, every
// row once, with their Tx fields joining the chunks.
func checkTransactions(t *testing.T, got []journal.Entry, txs, n int) {
	t.Helper()
	if len(got) != txs*n {
		t.Fatalf("%d entries, want %d", len(got), txs*n)
	}
	for i, e := range got {
		tx, k := i/n, i%n
		if v := value(e, e.After, "tx"); !v.Equal(journal.Int(int64(tx))) || !value(e, e.After, "k").Equal(journal.Int(int64(k))) {
			t.Fatalf("entry %d is tx %+v k %+v, want tx %d k %d", i, v, value(e, e.After, "k"), tx, k)
		}
		if e.Tx.Index != uint32(k) || e.Tx.Last != (k == n-1) || e.Tx.ID == "" || e.Tx.ID != e.Source.GTID {
			t.Fatalf("entry %d: tx %+v", i, e.Tx)
		}
		if k > 0 && e.Tx.ID != got[i-1].Tx.ID {
			t.Fatalf("entry %d: transaction id changed inside a transaction", i)
		}
		if e.Tx.Last && e.Source.Position == "" {
			t.Fatalf("entry %d ends a transaction without a resume position", i)
		}
	}
}

func TestSettingsProblems(t *testing.T) {
	good := map[string]string{"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL", "server_id": "1"}
	if p := settingsProblems(good, "mariadb", 99, false); len(p) != 0 {
		t.Fatalf("good settings: %v", p)
	}
	bad := map[string]string{"log_bin": "OFF", "binlog_format": "MIXED", "binlog_row_image": "MINIMAL", "server_id": "99"}
	p := strings.Join(settingsProblems(bad, "mariadb", 99, true), "; ")
	for _, want := range []string{"set log_bin=ON", "set binlog_format=ROW", "set binlog_row_image=FULL", "binlog_row_metadata is not supported", "server_id is 99", "rpl_semi_sync_master_enabled is not supported"} {
		if !strings.Contains(p, want) {
			t.Errorf("problems %q lack %q", p, want)
		}
	}
	if p := settingsProblems(good, "mysql", 99, false); len(p) != 2 {
		t.Errorf("mysql without gtid_mode: %v", p)
	}
	mysqlGood := map[string]string{"gtid_mode": "ON", "enforce_gtid_consistency": "ON", "binlog_row_value_options": ""}
	for k, v := range good {
		mysqlGood[k] = v
	}
	if p := settingsProblems(mysqlGood, "mysql", 99, false); len(p) != 0 {
		t.Errorf("good mysql settings: %v", p)
	}
	mysqlGood["binlog_row_value_options"] = "PARTIAL_JSON"
	if p := settingsProblems(mysqlGood, "mysql", 99, false); len(p) != 1 || !strings.Contains(p[0], "set binlog_row_value_options=''") {
		t.Errorf("mysql with partial JSON updates: %v", p)
	}
}

// A capture refuses a source whose settings rule it out, saying what to change.
func TestCaptureRefusesASameServerID(t *testing.T) {
	env := newCaptureEnv(t, 10)
	env.cap.cfg.Source.ServerID = 1 // site a's own server_id
	err := env.cap.Run(context.Background(), 1)
	if err == nil || !strings.Contains(err.Error(), "server_id is 1") {
		t.Fatalf("Run with the server's own id: %v", err)
	}
	if h, _ := env.store.Head(context.Background(), env.cap.Stream()); h.Seq != 0 {
		t.Fatalf("a refused capture wrote %d entries", h.Seq)
	}
}

// What a session with skip_replication=1 writes (musicd's appliers) is not captured: no echo.
func TestCaptureSkipsEventsMarkedSkipReplication(t *testing.T) {
	env := newCaptureEnv(t, 10)
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY)")
	stop := env.start(1)
	env.waitStarted()
	env.exec("INSERT INTO " + tbl + " VALUES (1)")
	env.exec("SET SESSION skip_replication = 1")
	env.exec("INSERT INTO " + tbl + " VALUES (2)")
	env.exec("ALTER TABLE " + tbl + " ADD COLUMN x INT")
	env.exec("SET SESSION skip_replication = 0")
	env.exec("INSERT INTO " + tbl + " VALUES (3, 3)")
	got := env.waitRows("t", 2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !value(got[0], got[0].After, "id").Equal(journal.Int(1)) || !value(got[1], got[1].After, "id").Equal(journal.Int(3)) {
		t.Fatalf("captured %+v, want the rows 1 and 3 only", got)
	}
}

// A transaction of large rows (170 of 200 KiB: 33 MiB, more than one journal batch may hold) is
// journaled whole, in chunks bounded by bytes, with the default ChunkEntries: before, the capture
// built one append over the journal's limit and stopped for good. Small transactions after it go
// on.
func TestCaptureChunksLargeRowsByBytes(t *testing.T) {
	env := newCaptureEnv(t, 0) // default ChunkEntries (1000)
	tbl := env.db + ".big"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, tx INT, k INT, payload MEDIUMBLOB)")
	stop := env.start(1)
	env.waitStarted()
	const rows = 170
	payload := strings.Repeat("p", 200<<10)
	env.exec("BEGIN")
	for k := range rows {
		env.exec("INSERT INTO "+tbl+" VALUES (?, 0, ?, ?)", k+1, k, payload)
	}
	env.exec("COMMIT")
	env.exec("BEGIN")
	env.exec("INSERT INTO "+tbl+" VALUES (?, 1, 0, 'small')", rows+1)
	env.exec("COMMIT")
	var got []journal.Entry
	testenv.WaitFor(t, 60*time.Second, "both transactions in the journal", func() bool {
		got = env.rowEntries("big")
		return len(got) >= rows+1
	})
	if err := stop(); err != nil {
		t.Fatalf("capture stopped with %v", err)
	}
	checkTransactions(t, got[:rows], 1, rows)
	if v := value(got[rows], got[rows].After, "payload"); !v.Equal(journal.Bytes([]byte("small"))) {
		t.Errorf("the transaction after the large one: %+v", got[rows])
	}
	if v := value(got[0], got[0].After, "payload"); len(v.Bytes) != len(payload) {
		t.Errorf("payload of %d bytes, want %d", len(v.Bytes), len(payload))
	}
}

// The capture's metrics count rows per table and operation, and transactions per source and per
// table changed, a transaction journaled in chunks once, with every table of every chunk.
func TestCaptureMetrics(t *testing.T) {
	env := newCaptureEnv(t, 4) // chunks of 4 entries: the 10-row transaction spans three batches
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	env.cap.cfg.Metrics = m
	env.exec("CREATE TABLE " + env.db + ".t1 (id INT PRIMARY KEY)")
	env.exec("CREATE TABLE " + env.db + ".t2 (id INT PRIMARY KEY)")
	stop := env.start(1)
	defer func() { _ = stop() }()
	env.waitStarted()
	env.exec("USE " + env.db) // the SEQUENCE engine's tables live in the current database
	env.exec("INSERT INTO " + env.db + ".t1 SELECT seq FROM seq_1_to_10")
	// t2's rows only in the first of this transaction's three chunks.
	env.exec("BEGIN")
	env.exec("INSERT INTO " + env.db + ".t2 VALUES (1), (2)")
	env.exec("INSERT INTO " + env.db + ".t1 SELECT seq FROM seq_11_to_16")
	env.exec("UPDATE " + env.db + ".t1 SET id = 17 WHERE id = 16")
	env.exec("COMMIT")
	env.exec("DELETE FROM " + env.db + ".t2 WHERE id = 1")
	env.waitRows("t2", 3)
	rows := func(table, op string) float64 {
		return testutil.ToFloat64(m.rows.WithLabelValues("a", env.db+"."+table, op))
	}
	if got := [4]float64{rows("t1", "insert"), rows("t1", "update"), rows("t2", "insert"), rows("t2", "delete")}; got != [4]float64{16, 1, 2, 1} {
		t.Errorf("rows t1 insert/update, t2 insert/delete = %v, want [16 1 2 1]", got)
	}
	if got := testutil.ToFloat64(m.txs.WithLabelValues("a")); got != 3 {
		t.Errorf("transactions = %v, want 3", got)
	}
	if t1, t2 := testutil.ToFloat64(m.txt.WithLabelValues("a", env.db+".t1")), testutil.ToFloat64(m.txt.WithLabelValues("a", env.db+".t2")); t1 != 2 || t2 != 2 {
		t.Errorf("transactions by table: t1 %v t2 %v, want 2 and 2", t1, t2)
	}
}

// With MariaDB's log_bin_compress on, rows events of more than log_bin_compress_min_len bytes are
// written compressed (WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT_V1): they are captured like the
// others. Before, the capture took them for events of no interest and lost their rows.
// log_bin_compress is global only: other packages' captures of this server meanwhile read
// compressed events too, which they handle the same way.
func TestCaptureCompressedRowsEvents(t *testing.T) {
	env := newCaptureEnv(t, 0)
	tbl := env.db + ".t"
	env.exec("CREATE TABLE " + tbl + " (id INT PRIMARY KEY, v VARCHAR(2000))")
	stop := env.start(1)
	env.waitStarted()
	var was string
	if r, err := env.conn.Execute("SELECT @@GLOBAL.log_bin_compress"); err != nil {
		t.Fatal(err)
	} else {
		was, _ = r.GetString(0, 0)
	}
	env.exec("SET GLOBAL log_bin_compress = ON")
	t.Cleanup(func() { env.exec("SET GLOBAL log_bin_compress = " + was) })
	file, pos := binlogPosition(t, env)
	long := strings.Repeat("compressible ", 100) // 1,300 bytes: well over log_bin_compress_min_len
	env.exec("INSERT INTO "+tbl+" VALUES (1, ?), (2, ?)", long, long)
	env.exec("UPDATE "+tbl+" SET v = ? WHERE id = 1", long+"!")
	env.exec("DELETE FROM " + tbl + " WHERE id = 2")
	r, err := env.conn.Execute(fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d", file, pos))
	if err != nil {
		t.Fatal(err)
	}
	compressed := 0
	for i := range r.RowNumber() {
		if name, _ := r.GetString(i, 2); strings.HasSuffix(name, "_compressed_v1") {
			compressed++
		}
	}
	if compressed < 3 { // others' writes meanwhile may add some
		t.Fatalf("the server wrote %d compressed rows events, not 3: the test does not test what it means to", compressed)
	}
	got := env.waitRows("t", 4)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		op journal.Op
		id int64
		v  string
	}{{journal.OpInsert, 1, long}, {journal.OpInsert, 2, long}, {journal.OpUpdate, 1, long + "!"}, {journal.OpDelete, 2, long}}
	if len(got) != len(want) {
		t.Fatalf("captured %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		row := got[i].After
		if w.op == journal.OpDelete {
			row = got[i].Before
		}
		if got[i].Op != w.op || !value(got[i], row, "id").Equal(journal.Int(w.id)) || !value(got[i], row, "v").Equal(journal.String(w.v)) {
			t.Errorf("entry %d: %v of %+v, want %v of id %d", i, got[i].Op, row, w.op, w.id)
		}
	}
	if b := value(got[2], got[2].Before, "v"); !b.Equal(journal.String(long)) {
		t.Errorf("the update's before image: %+v", b)
	}
}

// binlogPosition is the server's current binary log and position.
func binlogPosition(t *testing.T, env *captureEnv) (string, uint64) {
	t.Helper()
	r, err := env.conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	name, err := r.GetString(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	pos, err := r.GetUint(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	return name, pos
}
