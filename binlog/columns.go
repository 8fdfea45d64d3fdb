package binlog

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	pmysql "github.com/pingcap/tidb/pkg/parser/mysql"
	ptypes "github.com/pingcap/tidb/pkg/parser/types"

	// The parser needs a driver for the values in statements (column defaults, ...).
	_ "github.com/pingcap/tidb/pkg/parser/test_driver"

	"github.com/musicd/musicd/journal"
)

// A DDL entry carries the table's columns after the statement (journal.Entry.Columns). The
// capture computes them from what it has read, never from the live schema, which may be ahead of
// the event: the columns of the table's last TABLE_MAP event (binlog_row_metadata=FULL), then
// each DDL statement applied to them, parsed with TiDB's MySQL parser (the one go-mysql's canal
// uses). A CREATE TABLE names its columns itself. When the columns before an ALTER are not known
// (no row of the table read since the capture started) or the parser cannot read the statement,
// the entry carries the statement only.
//
// Types are spelled the way information_schema's COLUMN_TYPE does, without integer display
// widths: "int unsigned", "decimal(20,6)", "varchar(10)", "datetime(6)", "enum('a','b')",
// "longtext" (MariaDB's JSON). FLOAT and DOUBLE lose their (M,D): the binary log does not keep
// them.

// columnTracker knows the columns of the captured tables as of the event being read. Not safe
// for concurrent use (the capture's reader owns it).
type columnTracker struct {
	tables  map[string][]journal.Column // by "db.table"
	seen    map[string]uint64           // the schema version the columns were last read from a TABLE_MAP at
	parser  *parser.Parser
	maxlen  map[uint64]int // bytes per character of each collation id (from the source)
	mariadb bool
}

func newColumnTracker(maxlen map[uint64]int, mariadb bool) *columnTracker {
	return &columnTracker{tables: map[string][]journal.Column{}, seen: map[string]uint64{}, parser: parser.New(), maxlen: maxlen, mariadb: mariadb}
}

// collationMaxLen reads the bytes per character of every collation of the source: static
// server metadata, which the column lengths of TABLE_MAP events (in bytes) need.
func collationMaxLen(conn *client.Conn) (map[uint64]int, error) {
	r, err := conn.Execute(`SELECT c.ID, s.MAXLEN FROM information_schema.COLLATIONS c
		JOIN information_schema.CHARACTER_SETS s ON s.CHARACTER_SET_NAME = c.CHARACTER_SET_NAME`)
	if err != nil {
		return nil, fmt.Errorf("read the source's collations: %w", err)
	}
	out := make(map[uint64]int, r.RowNumber())
	for i := range r.RowNumber() {
		id, err1 := r.GetUint(i, 0)
		n, err2 := r.GetInt(i, 1)
		if err1 != nil || err2 != nil || n < 1 {
			return nil, fmt.Errorf("read the source's collations: row %d: %v %v", i, err1, err2)
		}
		out[id] = int(n)
	}
	return out, nil
}

func tableKey(db, table string) string { return strings.ToLower(db) + "." + strings.ToLower(table) }

// tableMap records the columns a TABLE_MAP event describes (s is its decoded schema).
// Every transaction has its TABLE_MAP events: the columns are spelled again only when the
// table's shape changed.
func (c *columnTracker) tableMap(s *tableSchema, e *replication.TableMapEvent) {
	key := tableKey(s.database, s.table)
	if v, ok := c.seen[key]; ok && v == s.version {
		return
	}
	c.seen[key] = s.version
	if cols, ok := tableMapColumns(s, e, c.maxlen); ok {
		c.tables[key] = cols
	} else {
		delete(c.tables, key)
	}
}

// tableMapColumns spells the columns of a TABLE_MAP event; false if a type cannot be spelled.
func tableMapColumns(s *tableSchema, e *replication.TableMapEvent, maxlen map[uint64]int) ([]journal.Column, bool) {
	geo := e.GeometryTypeMap()
	cols := make([]journal.Column, len(s.names))
	for i, name := range s.names {
		meta := s.meta[i]
		unsigned := ""
		if s.unsigned[i] {
			unsigned = " unsigned"
		}
		coll := s.collation[i]
		hasColl := coll != 0
		binary := hasColl && coll == 63
		chars := func(bytes int) (int, bool) {
			if binary {
				return bytes, true
			}
			n, ok := maxlen[coll]
			if !hasColl || !ok {
				return 0, false
			}
			return bytes / n, true
		}
		var typ string
		switch s.types[i] {
		case mysql.MYSQL_TYPE_TINY:
			typ = "tinyint" + unsigned
		case mysql.MYSQL_TYPE_SHORT:
			typ = "smallint" + unsigned
		case mysql.MYSQL_TYPE_INT24:
			typ = "mediumint" + unsigned
		case mysql.MYSQL_TYPE_LONG:
			typ = "int" + unsigned
		case mysql.MYSQL_TYPE_LONGLONG:
			typ = "bigint" + unsigned
		case mysql.MYSQL_TYPE_NEWDECIMAL:
			typ = fmt.Sprintf("decimal(%d,%d)", meta>>8, meta&0xff) + unsigned
		case mysql.MYSQL_TYPE_FLOAT:
			typ = "float" + unsigned
		case mysql.MYSQL_TYPE_DOUBLE:
			typ = "double" + unsigned
		case mysql.MYSQL_TYPE_BIT:
			typ = fmt.Sprintf("bit(%d)", (meta>>8)*8+meta&0xff)
		case mysql.MYSQL_TYPE_DATE, mysql.MYSQL_TYPE_NEWDATE:
			typ = "date"
		case mysql.MYSQL_TYPE_YEAR:
			typ = "year"
		case mysql.MYSQL_TYPE_DATETIME, mysql.MYSQL_TYPE_DATETIME2:
			typ = withFsp("datetime", int(meta))
		case mysql.MYSQL_TYPE_TIMESTAMP, mysql.MYSQL_TYPE_TIMESTAMP2:
			typ = withFsp("timestamp", int(meta))
		case mysql.MYSQL_TYPE_TIME, mysql.MYSQL_TYPE_TIME2:
			typ = withFsp("time", int(meta))
		case mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING:
			n, ok := chars(int(meta))
			if !ok {
				return nil, false
			}
			typ = pick(binary, "varbinary", "varchar") + "(" + strconv.Itoa(n) + ")"
		case mysql.MYSQL_TYPE_STRING:
			// CHAR and BINARY: the length in bytes is split across the metadata's two bytes.
			n, ok := chars(int((((meta >> 4) & 0x300) ^ 0x300) + meta&0xff))
			if !ok {
				return nil, false
			}
			typ = pick(binary, "binary", "char") + "(" + strconv.Itoa(n) + ")"
		case mysql.MYSQL_TYPE_ENUM:
			typ = "enum(" + quoteElems(s.enums[i]) + ")"
		case mysql.MYSQL_TYPE_SET:
			typ = "set(" + quoteElems(s.sets[i]) + ")"
		case mysql.MYSQL_TYPE_BLOB:
			size := [...]string{1: "tiny", 2: "", 3: "medium", 4: "long"}
			if meta < 1 || meta > 4 {
				return nil, false
			}
			typ = size[meta] + pick(binary, "blob", "text")
		case mysql.MYSQL_TYPE_JSON:
			typ = "json"
		case mysql.MYSQL_TYPE_GEOMETRY:
			typ = geometryName(geo[i])
		default:
			return nil, false
		}
		cols[i] = journal.Column{Name: name, Type: typ}
	}
	return cols, true
}

func withFsp(name string, fsp int) string {
	if fsp <= 0 {
		return name
	}
	return name + "(" + strconv.Itoa(fsp) + ")"
}

func pick(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

func quoteElems(elems []string) string {
	q := make([]string, len(elems))
	for i, e := range elems {
		q[i] = "'" + strings.ReplaceAll(e, "'", "''") + "'"
	}
	return strings.Join(q, ",")
}

func geometryName(t uint64) string {
	names := [...]string{"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon", "geometrycollection"}
	if t < uint64(len(names)) {
		return names[t]
	}
	return "geometry"
}

// spatialRe finds a column declared with a spatial type: its name and the type.
var spatialRe = regexp.MustCompile("(?i)(`[^`]+`|[\\w$]+)\\s+(geometrycollection|multilinestring|multipolygon|multipoint|linestring|polygon|point|geometry)\\b")

// ddl applies a DDL statement (run with default database db) to the tracked columns and returns
// the columns of the table it names afterwards: nil for a dropped table; ok false when they are
// not known (the statement unreadable, or the columns before it unknown).
func (c *columnTracker) ddl(db, stmt string) (cols []journal.Column, ok bool, err error) {
	// The next TABLE_MAP of any table spells its columns again.
	clear(c.seen)
	// TiDB's parser has no spatial types: such columns are parsed as LONGBLOB and spelled from
	// the statement.
	spatial := map[string]string{}
	stmt = spatialRe.ReplaceAllStringFunc(stmt, func(m string) string {
		sub := spatialRe.FindStringSubmatch(m)
		spatial[strings.ToLower(strings.Trim(sub[1], "`"))] = strings.ToLower(sub[2])
		return sub[1] + " LONGBLOB"
	})
	nodes, _, err := c.parser.Parse(stmt, "", "")
	if err != nil || len(nodes) != 1 {
		return nil, false, fmt.Errorf("parse: %v", err)
	}
	defer func() {
		for i := range cols {
			if t, ok := spatial[strings.ToLower(cols[i].Name)]; ok {
				cols[i].Type = t
			}
		}
	}()
	name := func(t *ast.TableName) string {
		d := t.Schema.O
		if d == "" {
			d = db
		}
		return tableKey(d, t.Name.O)
	}
	switch n := nodes[0].(type) {
	case *ast.CreateTableStmt:
		key := name(n.Table)
		if n.ReferTable != nil { // CREATE TABLE ... LIKE
			prev, known := c.tables[name(n.ReferTable)]
			if !known {
				delete(c.tables, key)
				return nil, false, nil
			}
			c.tables[key] = append([]journal.Column(nil), prev...)
			return c.tables[key], true, nil
		}
		if n.Select != nil {
			delete(c.tables, key)
			return nil, false, nil
		}
		if _, exists := c.tables[key]; exists && n.IfNotExists {
			return c.tables[key], true, nil
		}
		out := make([]journal.Column, 0, len(n.Cols))
		for _, d := range n.Cols {
			out = append(out, journal.Column{Name: d.Name.Name.O, Type: c.spell(d.Tp)})
		}
		c.tables[key] = out
		return out, true, nil
	case *ast.DropTableStmt:
		for _, t := range n.Tables {
			delete(c.tables, name(t))
		}
		return nil, true, nil
	case *ast.TruncateTableStmt:
		cols, ok := c.tables[name(n.Table)]
		return cols, ok, nil
	case *ast.RenameTableStmt:
		var last []journal.Column
		known := true
		for _, tt := range n.TableToTables {
			prev, ok := c.tables[name(tt.OldTable)]
			delete(c.tables, name(tt.OldTable))
			if ok {
				c.tables[name(tt.NewTable)] = prev
			} else {
				delete(c.tables, name(tt.NewTable))
			}
			last, known = prev, ok
		}
		return last, known, nil
	case *ast.AlterTableStmt:
		key := name(n.Table)
		prev, known := c.tables[key]
		if !known {
			return nil, false, nil
		}
		out, err := c.alter(append([]journal.Column(nil), prev...), n.Specs)
		if err != nil {
			delete(c.tables, key)
			return nil, false, err
		}
		for _, spec := range n.Specs {
			if spec.Tp == ast.AlterTableRenameTable {
				delete(c.tables, key)
				key = name(spec.NewTable)
			}
		}
		c.tables[key] = out
		return out, true, nil
	}
	return nil, false, nil
}

// alter applies the column changes of ALTER TABLE specs to cols.
func (c *columnTracker) alter(cols []journal.Column, specs []*ast.AlterTableSpec) ([]journal.Column, error) {
	find := func(name string) int {
		for i, col := range cols {
			if strings.EqualFold(col.Name, name) {
				return i
			}
		}
		return -1
	}
	place := func(col journal.Column, pos *ast.ColumnPosition) error {
		at := len(cols)
		if pos != nil {
			switch pos.Tp {
			case ast.ColumnPositionFirst:
				at = 0
			case ast.ColumnPositionAfter:
				if at = find(pos.RelativeColumn.Name.O); at < 0 {
					return fmt.Errorf("no column %s to place %s after", pos.RelativeColumn.Name.O, col.Name)
				}
				at++
			}
		}
		cols = append(cols[:at], append([]journal.Column{col}, cols[at:]...)...)
		return nil
	}
	for _, spec := range specs {
		switch spec.Tp {
		case ast.AlterTableAddColumns:
			for _, d := range spec.NewColumns {
				if find(d.Name.Name.O) >= 0 {
					if spec.IfNotExists {
						continue
					}
					return nil, fmt.Errorf("column %s exists", d.Name.Name.O)
				}
				if err := place(journal.Column{Name: d.Name.Name.O, Type: c.spell(d.Tp)}, spec.Position); err != nil {
					return nil, err
				}
			}
		case ast.AlterTableDropColumn:
			i := find(spec.OldColumnName.Name.O)
			if i < 0 {
				if spec.IfExists {
					continue
				}
				return nil, fmt.Errorf("no column %s to drop", spec.OldColumnName.Name.O)
			}
			cols = append(cols[:i], cols[i+1:]...)
		case ast.AlterTableModifyColumn, ast.AlterTableChangeColumn:
			old := spec.NewColumns[0].Name.Name.O
			if spec.Tp == ast.AlterTableChangeColumn {
				old = spec.OldColumnName.Name.O
			}
			i := find(old)
			if i < 0 {
				if spec.IfExists {
					continue
				}
				return nil, fmt.Errorf("no column %s to change", old)
			}
			d := spec.NewColumns[0]
			col := journal.Column{Name: d.Name.Name.O, Type: c.spell(d.Tp)}
			if spec.Position == nil || spec.Position.Tp == ast.ColumnPositionNone {
				cols[i] = col
				continue
			}
			cols = append(cols[:i], cols[i+1:]...)
			if err := place(col, spec.Position); err != nil {
				return nil, err
			}
		case ast.AlterTableRenameColumn:
			i := find(spec.OldColumnName.Name.O)
			if i < 0 {
				return nil, fmt.Errorf("no column %s to rename", spec.OldColumnName.Name.O)
			}
			cols[i].Name = spec.NewColumnName.Name.O
		}
	}
	return cols, nil
}

// spell spells a column type of a DDL statement the way tableMapColumns does.
func (c *columnTracker) spell(ft *ptypes.FieldType) string {
	unsigned := ""
	if pmysql.HasUnsignedFlag(ft.GetFlag()) {
		unsigned = " unsigned"
	}
	binary := ft.GetCharset() == "binary"
	flen, dec := ft.GetFlen(), ft.GetDecimal()
	switch ft.GetType() {
	case pmysql.TypeTiny:
		return "tinyint" + unsigned
	case pmysql.TypeShort:
		return "smallint" + unsigned
	case pmysql.TypeInt24:
		return "mediumint" + unsigned
	case pmysql.TypeLong:
		return "int" + unsigned
	case pmysql.TypeLonglong:
		return "bigint" + unsigned
	case pmysql.TypeNewDecimal:
		if flen < 0 {
			flen = 10
		}
		return fmt.Sprintf("decimal(%d,%d)", flen, max(dec, 0)) + unsigned
	case pmysql.TypeFloat:
		return "float" + unsigned
	case pmysql.TypeDouble:
		return "double" + unsigned
	case pmysql.TypeBit:
		return fmt.Sprintf("bit(%d)", max(flen, 1))
	case pmysql.TypeDate:
		return "date"
	case pmysql.TypeYear:
		return "year"
	case pmysql.TypeDatetime:
		return withFsp("datetime", dec)
	case pmysql.TypeTimestamp:
		return withFsp("timestamp", dec)
	case pmysql.TypeDuration:
		return withFsp("time", dec)
	case pmysql.TypeVarchar, pmysql.TypeVarString:
		return pick(binary, "varbinary", "varchar") + "(" + strconv.Itoa(flen) + ")"
	case pmysql.TypeString:
		return pick(binary, "binary", "char") + "(" + strconv.Itoa(max(flen, 1)) + ")"
	case pmysql.TypeEnum:
		return "enum(" + quoteElems(ft.GetElems()) + ")"
	case pmysql.TypeSet:
		return "set(" + quoteElems(ft.GetElems()) + ")"
	case pmysql.TypeTinyBlob:
		return "tiny" + pick(binary, "blob", "text")
	case pmysql.TypeBlob:
		return pick(binary, "blob", "text")
	case pmysql.TypeMediumBlob:
		return "medium" + pick(binary, "blob", "text")
	case pmysql.TypeLongBlob:
		return "long" + pick(binary, "blob", "text")
	case pmysql.TypeJSON:
		if c.mariadb { // an alias of LONGTEXT with a check
			return "longtext"
		}
		return "json"
	case pmysql.TypeGeometry:
		return strings.ToLower(ft.String())
	}
	return strings.ToLower(ft.CompactStr())
}
