package binlog

import (
	"strings"
	"testing"

	"github.com/musicd/musicd/journal"
)

// spelledColumns joins columns as "name type,name type".
func spelledColumns(cs []journal.Column) string {
	var out []string
	for _, col := range cs {
		out = append(out, col.Name+" "+col.Type)
	}
	return strings.Join(out, ",")
}

// The tracker's handling of DDL it can and cannot follow (pure logic; the spelling of every type
// against a real server is TestDDLColumns).
func TestColumnTracker(t *testing.T) {
	c := newColumnTracker(nil, true)
	steps := []struct {
		db, stmt string
		want     string // "" with known: no columns (a dropped table)
		known    bool
		err      bool
	}{
		{"d", "CREATE TABLE t (id INT UNSIGNED PRIMARY KEY, p POINT, `v w` VARCHAR(5))", "id int unsigned,p point,v w varchar(5)", true, false},
		{"x", "ALTER TABLE d.t ADD COLUMN IF NOT EXISTS id BIGINT, ADD COLUMN g GEOMETRY FIRST", "g geometry,id int unsigned,p point,v w varchar(5)", true, false},
		{"d", "ALTER TABLE t DROP COLUMN IF EXISTS nope, MODIFY p LINESTRING AFTER `v w`, RENAME TO t2", "g geometry,id int unsigned,v w varchar(5),p linestring", true, false},
		{"d", "RENAME TABLE t2 TO t3, t3 TO t4", "g geometry,id int unsigned,v w varchar(5),p linestring", true, false},
		{"d", "ALTER TABLE t4 CHANGE COLUMN id ID2 SMALLINT, ADD INDEX (g(10))", "g geometry,ID2 smallint,v w varchar(5),p linestring", true, false},
		{"d", "TRUNCATE TABLE t4", "g geometry,ID2 smallint,v w varchar(5),p linestring", true, false},
		{"d", "ALTER TABLE t4 ADD COLUMN z INT AFTER nosuch", "", false, true},
		{"d", "ALTER TABLE t4 ADD COLUMN z INT", "", false, false}, // forgotten after the failure
		{"d", "ALTER TABLE unknown ADD COLUMN z INT", "", false, false},
		{"d", "ALTER TABLE t4 WITH SYSTEM VERSIONING AND THEN SOME", "", false, true},
		{"d", "CREATE TABLE s (a DECIMAL, b DECIMAL(8,3) UNSIGNED, c BIT, d CHAR, e BINARY(3), f TEXT, g MEDIUMBLOB, h DATETIME(3), i TIME, j SET('x','y''z'), k JSON)",
			"a decimal(10,0),b decimal(8,3) unsigned,c bit(1),d char(1),e binary(3),f text,g mediumblob,h datetime(3),i time,j set('x','y''z'),k longtext", true, false},
		{"d", "CREATE TABLE s2 LIKE s", "a decimal(10,0),b decimal(8,3) unsigned,c bit(1),d char(1),e binary(3),f text,g mediumblob,h datetime(3),i time,j set('x','y''z'),k longtext", true, false},
		{"d", "DROP TABLE s, s2", "", true, false},
		{"d", "ALTER TABLE s ADD COLUMN z INT", "", false, false},
	}
	for i, st := range steps {
		cols, known, err := c.ddl(st.db, st.stmt)
		if got := spelledColumns(cols); got != st.want || known != st.known || (err != nil) != st.err {
			t.Errorf("step %d %q: %q %v %v; want %q %v error %v", i, st.stmt, got, known, err, st.want, st.known, st.err)
		}
	}
}
