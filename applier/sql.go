package applier

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/musicd/musicd/journal"
)

// target is one connection to the target database, set up for loop-safe writes. It is owned by
// one stream goroutine.
type target struct {
	conn  *client.Conn
	meta  string // quoted meta database
	stmts map[string]*client.Stmt
}

// sessionSetup makes a session's writes loop-safe and exact:
//   - skip_replication=1: the events are flagged, so the target site's capture does not journal
//     them again (no echo); sql_log_bin=1: they are still binlogged, so native replicas receive
//     them (replicate_events_marked_for_skip=REPLICATE is the server default);
//   - utf8mb4 and UTC: journal strings are UTF-8 and TIMESTAMP texts are UTC;
//   - strict mode: a value the column cannot hold is an error, never a silent truncation;
//     NO_AUTO_VALUE_ON_ZERO: an id 0 stays 0.
var sessionSetup = []string{
	"SET NAMES utf8mb4",
	"SET SESSION time_zone = '+00:00'",
	"SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'",
	"SET SESSION skip_replication = 1",
	"SET SESSION sql_log_bin = 1",
}

func connect(ctx context.Context, c *Config) (*target, error) {
	setTimeouts := func(conn *client.Conn) error {
		conn.ReadTimeout, conn.WriteTimeout = c.Timeout, c.Timeout
		return nil
	}
	conn, err := client.ConnectWithContext(ctx, c.Addr, c.User, c.Password, "", c.Timeout, setTimeouts)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", c.Addr, err)
	}
	for _, q := range sessionSetup {
		if _, err := conn.Execute(q); err != nil {
			conn.Close()
			return nil, fmt.Errorf("target %s: %s: %w", c.Addr, q, err)
		}
	}
	return &target{conn: conn, meta: quote(c.MetaDatabase), stmts: map[string]*client.Stmt{}}, nil
}

func (t *target) close() {
	if t != nil && t.conn != nil {
		t.conn.Close()
	}
}

// maxStmts bounds the prepared statements kept per connection.
const maxStmts = 256

// exec runs a statement with bound arguments, through a prepared statement kept per connection.
func (t *target) exec(q string, args ...any) (*mysql.Result, error) {
	if len(args) == 0 {
		return t.conn.Execute(q)
	}
	s, ok := t.stmts[q]
	if !ok {
		for k, old := range t.stmts { // full: one goes, whichever the map yields first
			if len(t.stmts) < maxStmts {
				break
			}
			_ = old.Close()
			delete(t.stmts, k)
		}
		var err error
		if s, err = t.conn.Prepare(q); err != nil {
			return nil, err
		}
		t.stmts[q] = s
	}
	return s.Execute(args...)
}

// ensureMeta creates the applier's tables in the target.
func (t *target) ensureMeta() error {
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + t.meta,
		"CREATE TABLE IF NOT EXISTS " + t.meta + `.positions (
			stream VARCHAR(512) CHARACTER SET ascii NOT NULL PRIMARY KEY,
			seq BIGINT UNSIGNED NOT NULL,
			gtid VARCHAR(255) NOT NULL DEFAULT '',
			hlc_wall BIGINT NOT NULL DEFAULT 0,
			updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
		) ENGINE=InnoDB`,
		"CREATE TABLE IF NOT EXISTS " + t.meta + `.row_clock (
			db VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
			tbl VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
			pk_hash BINARY(32) NOT NULL,
			hlc_wall BIGINT NOT NULL,
			hlc_logical INT UNSIGNED NOT NULL,
			origin VARCHAR(64) CHARACTER SET ascii NOT NULL,
			PRIMARY KEY (db, tbl, pk_hash)
		) ENGINE=InnoDB`,
		"CREATE TABLE IF NOT EXISTS " + t.meta + `.dead_letters (
			id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
			stream VARCHAR(512) CHARACTER SET ascii NOT NULL,
			seq BIGINT UNSIGNED NOT NULL,
			gtid VARCHAR(255) NOT NULL,
			db VARCHAR(64) CHARACTER SET utf8mb4 NOT NULL,
			tbl VARCHAR(64) CHARACTER SET utf8mb4 NOT NULL,
			op VARCHAR(16) NOT NULL,
			reason VARCHAR(16) NOT NULL,
			error TEXT CHARACTER SET utf8mb4 NOT NULL,
			entry LONGTEXT CHARACTER SET utf8mb4 NOT NULL,
			target LONGTEXT CHARACTER SET utf8mb4 NULL,
			created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
			KEY (stream, seq)
		) ENGINE=InnoDB`,
	} {
		if _, err := t.exec(q); err != nil {
			return fmt.Errorf("creating the applier's tables in %s: %w", t.meta, err)
		}
	}
	return nil
}

// position reads a stream's applied position (0 if none).
func (t *target) position(stream string) (uint64, error) {
	r, err := t.exec("SELECT seq FROM "+t.meta+".positions WHERE stream = ?", stream)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	if r.Resultset == nil || r.RowNumber() == 0 {
		return 0, nil
	}
	return r.GetUint(0, 0)
}

func (t *target) setPosition(e *journal.Entry) error {
	_, err := t.exec("INSERT INTO "+t.meta+".positions (stream, seq, gtid, hlc_wall) VALUES (?, ?, ?, ?) "+
		"ON DUPLICATE KEY UPDATE seq = VALUES(seq), gtid = VALUES(gtid), hlc_wall = VALUES(hlc_wall)",
		e.Stream, e.Seq, e.Source.GTID, e.HLC.Wall)
	return err
}

// rowState reads, under a lock, the target's row at key: whether it exists, whether it equals img
// on img's columns (compared by the server, with the image's values bound), and the row's values
// on those columns (for conflict reports).
func (t *target) rowState(db, table string, key, img journal.Row) (exists, matches bool, cur map[string]any, err error) {
	var sel, where []string
	var args []any
	cmp := []string{"1"}
	for _, f := range img {
		cmp = append(cmp, "("+quote(f.Name)+" <=> ?)")
		args = append(args, f.Value.SQLArg())
	}
	sel = append(sel, strings.Join(cmp, " AND "))
	for _, f := range img {
		sel = append(sel, quote(f.Name))
	}
	for _, f := range key {
		where = append(where, quote(f.Name)+" = ?")
		args = append(args, f.Value.SQLArg())
	}
	q := "SELECT " + strings.Join(sel, ", ") + " FROM " + quote(db) + "." + quote(table) + " WHERE " + strings.Join(where, " AND ") + " FOR UPDATE"
	r, err := t.exec(q, args...)
	if err != nil {
		return false, false, nil, err
	}
	defer r.Close()
	if r.Resultset == nil || r.RowNumber() == 0 {
		return false, false, nil, nil
	}
	m, err := r.GetInt(0, 0)
	if err != nil {
		return false, false, nil, err
	}
	cur = make(map[string]any, len(img))
	for i, f := range img {
		v, _ := r.GetValue(0, i+1)
		cur[f.Name] = display(v)
	}
	return true, m == 1, cur, nil
}

// clock reads (and locks) a row's clock.
func (t *target) clock(db, table string, key journal.Row) (*RowClock, error) {
	r, err := t.exec("SELECT hlc_wall, hlc_logical, origin FROM "+t.meta+".row_clock WHERE db = ? AND tbl = ? AND pk_hash = ? FOR UPDATE",
		db, table, keyHash(key))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if r.Resultset == nil || r.RowNumber() == 0 {
		return nil, nil
	}
	wall, err := r.GetInt(0, 0)
	if err != nil {
		return nil, err
	}
	logical, err := r.GetUint(0, 1)
	if err != nil {
		return nil, err
	}
	origin, err := r.GetString(0, 2)
	if err != nil {
		return nil, err
	}
	// GetString aliases the result's buffer, which Close hands back to go-mysql's pool for the
	// next query: copy what outlives it.
	return &RowClock{HLC: journal.Timestamp{Wall: wall, Logical: uint32(logical)}, Origin: strings.Clone(origin)}, nil
}

// do executes one action of a decision for entry e.
func (t *target) do(e *journal.Entry, a Action) error {
	tbl := quote(e.Database) + "." + quote(e.Table)
	switch a.Kind {
	case ActInsert, ActUpsert:
		cols, marks, args := columns(a.Row)
		q := "INSERT INTO " + tbl + " (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(marks, ", ") + ")"
		if a.Kind == ActUpsert {
			var set []string
			for _, c := range cols {
				set = append(set, c+" = VALUES("+c+")")
			}
			q += " ON DUPLICATE KEY UPDATE " + strings.Join(set, ", ")
		}
		_, err := t.exec(q, args...)
		return err
	case ActUpdate:
		cols, _, args := columns(a.Row)
		where, wargs := whereKey(a.Key)
		_, err := t.exec("UPDATE "+tbl+" SET "+strings.Join(cols, " = ?, ")+" = ? WHERE "+where, append(args, wargs...)...)
		return err
	case ActDelete:
		where, args := whereKey(a.Key)
		_, err := t.exec("DELETE FROM "+tbl+" WHERE "+where, args...)
		return err
	case ActClock:
		_, err := t.exec("INSERT INTO "+t.meta+".row_clock (db, tbl, pk_hash, hlc_wall, hlc_logical, origin) VALUES (?, ?, ?, ?, ?, ?) "+
			"ON DUPLICATE KEY UPDATE hlc_wall = VALUES(hlc_wall), hlc_logical = VALUES(hlc_logical), origin = VALUES(origin)",
			e.Database, e.Table, keyHash(a.Key), a.Clock.HLC.Wall, uint64(a.Clock.HLC.Logical), a.Clock.Origin)
		return err
	}
	return fmt.Errorf("action %v is not a statement", a.Kind)
}

// deadLetter records an entry the target did not take, with the reason and the target's row.
func (t *target) deadLetter(e *journal.Entry, reason, msg string, cur map[string]any) error {
	var tj any
	if cur != nil {
		b, _ := json.Marshal(cur)
		tj = string(b)
	}
	_, err := t.exec("INSERT INTO "+t.meta+".dead_letters (stream, seq, gtid, db, tbl, op, reason, error, entry, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		e.Stream, e.Seq, e.Source.GTID, e.Database, e.Table, e.Op.String(), reason, msg, entryJSON(e), tj)
	return err
}

func columns(r journal.Row) (cols, marks []string, args []any) {
	for _, f := range r {
		cols = append(cols, quote(f.Name))
		marks = append(marks, "?")
		args = append(args, f.Value.SQLArg())
	}
	return cols, marks, args
}

func whereKey(key journal.Row) (string, []any) {
	var w []string
	var args []any
	for _, f := range key {
		w = append(w, quote(f.Name)+" = ?")
		args = append(args, f.Value.SQLArg())
	}
	return strings.Join(w, " AND "), args
}

// errIdentifier: a database, table or column name from an entry that cannot be a MariaDB
// identifier. The entry is refused before any SQL is built (invariant 8).
var errIdentifier = errors.New("invalid identifier")

// checkIdentifiers validates every name an entry puts in SQL text.
func checkIdentifiers(e *journal.Entry) error {
	check := func(what, s string) error {
		if s == "" || utf8.RuneCountInString(s) > 64 || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return fmt.Errorf("%w: %s %q", errIdentifier, what, s)
		}
		return nil
	}
	if err := check("database", e.Database); err != nil {
		return err
	}
	if e.Op == journal.OpDDL && e.Table == "" {
		return nil
	}
	if err := check("table", e.Table); err != nil {
		return err
	}
	for _, r := range []journal.Row{e.Key, e.Before, e.After} {
		for _, f := range r {
			if err := check("column", f.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// quote quotes a checked identifier for MariaDB.
func quote(id string) string { return "`" + strings.ReplaceAll(id, "`", "``") + "`" }

// display renders a value read from the target for conflict reports and dead letters.
func display(v any) any {
	switch b := v.(type) {
	case []byte:
		if utf8.Valid(b) {
			return string(b)
		}
		return "0x" + hex.EncodeToString(b)
	case string:
		return strings.Clone(b) // may alias a pooled result buffer
	}
	return v
}

func entryJSON(e *journal.Entry) string {
	b, _ := json.Marshal(map[string]any{
		"stream": e.Stream, "seq": e.Seq, "gtid": e.Source.GTID, "origin": e.Origin,
		"hlc": map[string]any{"wall": e.HLC.Wall, "logical": e.HLC.Logical},
		"op":  e.Op.String(), "database": e.Database, "table": e.Table,
		"key": e.Key.Map(), "before": e.Before.Map(), "after": e.After.Map(), "statement": e.Statement,
	})
	return string(b)
}
