package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/musicd/musicd/journal"
)

// EmbeddedBackend is the Backend of embedded mode: a Pebble database of its own in a local
// directory, behaving like CassandraBackend over Cassandra. Each row keeps, per regular column
// and for music_ts, the value and the timestamp of its last write, and a row tombstone (the
// newest deletion's timestamp), and a mutation is merged in like Cassandra merges cells: the
// newer timestamp wins; a write at or below the tombstone is dead; on equal timestamps a deletion
// (or a null) beats a value, and the greater value (CompareValues) beats the smaller. A row
// exists iff its music_ts cell is live. Writes are durable on return (pebble.Sync).
//
// Key layout:
//
//	'K' keyspace                    -> Keyspace (JSON)
//	'T' keyspace 0x00 table         -> table id (8 bytes) + Table (JSON)
//	'N'                             -> next table id (8 bytes)
//	'R' table id (8) encoded key    -> row record (embRecord)
//
// Rows live under the table's id, never reused, so that rows of a dropped table (deleted with
// DeleteRange) cannot reappear in a new table of the same name. Row keys are the
// order-preserving encodings of the key values (bkAppendKey): partition key columns, then
// clustering columns, so a select returns rows in that order.
//
// Concurrency: schema changes hold mu exclusively; row operations hold it shared for their
// whole duration (so a drop waits for the writes in flight), and a read-modify-write of a row
// holds the row key's stripe.
type EmbeddedBackend struct {
	db      *pebble.DB
	logger  *slog.Logger
	stripes [256]sync.Mutex
	mu      struct {
		sync.RWMutex
		keyspaces map[string]Keyspace
		tables    map[string]map[string]*embTable // keyspace -> name -> table
		nextID    uint64
	}
}

var _ Backend = (*EmbeddedBackend)(nil)

// embTable is a table of the embedded store: its id and validated definition.
type embTable struct {
	id uint64
	bt *bkTable
}

func (t *embTable) rowPrefix() []byte { return binary.BigEndian.AppendUint64([]byte{'R'}, t.id) }

// OpenEmbeddedBackend opens (creating if needed) the store in dir and loads its schema.
func OpenEmbeddedBackend(dir string, logger *slog.Logger) (*EmbeddedBackend, error) {
	db, err := pebble.Open(dir, &pebble.Options{Logger: embPebbleLogger{logger.With("component", "pebble")}})
	if err != nil {
		return nil, fmt.Errorf("state: open embedded store %s: %w", dir, err)
	}
	b := &EmbeddedBackend{db: db, logger: logger}
	if err := b.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("state: open embedded store %s: %w", dir, err)
	}
	return b, nil
}

// load reads the keyspaces, tables and id counter into memory: Pebble is this process's alone,
// so the copy in memory stays exact.
func (b *EmbeddedBackend) load() error {
	b.mu.keyspaces = map[string]Keyspace{}
	b.mu.tables = map[string]map[string]*embTable{}
	it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'K'}, UpperBound: []byte{'K' + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		var ks Keyspace
		if err := json.Unmarshal(it.Value(), &ks); err != nil {
			_ = it.Close()
			return fmt.Errorf("keyspace %q: corrupt record: %w", it.Key()[1:], err)
		}
		b.mu.keyspaces[ks.Name] = ks
		b.mu.tables[ks.Name] = map[string]*embTable{}
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = b.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'T'}, UpperBound: []byte{'T' + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		v := it.Value()
		var t Table
		if len(v) < 8 {
			_ = it.Close()
			return fmt.Errorf("table %q: corrupt record", it.Key()[1:])
		}
		if err := json.Unmarshal(v[8:], &t); err != nil {
			_ = it.Close()
			return fmt.Errorf("table %q: corrupt record: %w", it.Key()[1:], err)
		}
		bt, err := newBkTable(t)
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("table %s.%s: stored definition: %w", t.Keyspace, t.Name, err)
		}
		if b.mu.tables[t.Keyspace] == nil {
			b.mu.tables[t.Keyspace] = map[string]*embTable{}
		}
		b.mu.tables[t.Keyspace][t.Name] = &embTable{id: binary.BigEndian.Uint64(v), bt: bt}
	}
	if err := it.Close(); err != nil {
		return err
	}
	b.mu.nextID = 1
	v, closer, err := b.db.Get([]byte{'N'})
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	if len(v) != 8 {
		return errors.New("corrupt table id counter")
	}
	b.mu.nextID = binary.BigEndian.Uint64(v)
	return nil
}

// Close closes the database.
func (b *EmbeddedBackend) Close() error { return b.db.Close() }

func embKeyspaceKey(name string) []byte { return append([]byte{'K'}, name...) }

func embTableKey(keyspace, name string) []byte {
	k := append([]byte{'T'}, keyspace...)
	k = append(k, 0)
	return append(k, name...)
}

// CreateKeyspace implements Backend.
func (b *EmbeddedBackend) CreateKeyspace(ctx context.Context, ks Keyspace) error {
	if err := ks.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(ks.Replication) == 0 {
		ks.Replication = nil
	} else {
		ks.Replication = cloneReplication(ks.Replication)
	}
	rec, err := json.Marshal(ks)
	if err != nil {
		return fmt.Errorf("state: create keyspace %s: %w", ks.Name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.mu.keyspaces[ks.Name]; ok {
		return fmt.Errorf("%w: keyspace %s", ErrExists, ks.Name)
	}
	if err := b.db.Set(embKeyspaceKey(ks.Name), rec, pebble.Sync); err != nil {
		return fmt.Errorf("state: create keyspace %s: %w", ks.Name, err)
	}
	b.mu.keyspaces[ks.Name] = ks
	b.mu.tables[ks.Name] = map[string]*embTable{}
	return nil
}

func cloneReplication(m map[string]int) map[string]int {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// DropKeyspace implements Backend.
func (b *EmbeddedBackend) DropKeyspace(ctx context.Context, name string) error {
	if err := ValidateIdentifier("keyspace", name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.mu.keyspaces[name]; !ok {
		return fmt.Errorf("%w: keyspace %s", ErrNotFound, name)
	}
	batch := b.db.NewBatch()
	defer batch.Close()
	for _, t := range b.mu.tables[name] {
		if err := b.dropTableLocked(batch, t); err != nil {
			return fmt.Errorf("state: drop keyspace %s: %w", name, err)
		}
	}
	if err := batch.Delete(embKeyspaceKey(name), nil); err != nil {
		return fmt.Errorf("state: drop keyspace %s: %w", name, err)
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: drop keyspace %s: %w", name, err)
	}
	delete(b.mu.keyspaces, name)
	delete(b.mu.tables, name)
	return nil
}

// dropTableLocked adds the deletion of t's definition and rows to batch.
func (b *EmbeddedBackend) dropTableLocked(batch *pebble.Batch, t *embTable) error {
	if err := batch.Delete(embTableKey(t.bt.Keyspace, t.bt.Name), nil); err != nil {
		return err
	}
	end := binary.BigEndian.AppendUint64([]byte{'R'}, t.id+1)
	return batch.DeleteRange(t.rowPrefix(), end, nil)
}

// Keyspaces implements Backend.
func (b *EmbeddedBackend) Keyspaces(ctx context.Context) ([]Keyspace, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]Keyspace, 0, len(b.mu.keyspaces))
	for _, ks := range b.mu.keyspaces {
		ks.Replication = cloneReplication(ks.Replication)
		out = append(out, ks)
	}
	slices.SortFunc(out, func(a, b Keyspace) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Keyspace implements Backend.
func (b *EmbeddedBackend) Keyspace(ctx context.Context, name string) (Keyspace, error) {
	if err := ValidateIdentifier("keyspace", name); err != nil {
		return Keyspace{}, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	ks, ok := b.mu.keyspaces[name]
	if !ok {
		return Keyspace{}, fmt.Errorf("%w: keyspace %s", ErrNotFound, name)
	}
	ks.Replication = cloneReplication(ks.Replication)
	return ks, nil
}

// CreateTable implements Backend.
func (b *EmbeddedBackend) CreateTable(ctx context.Context, t Table) error {
	bt, err := newBkTable(t)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	def, err := json.Marshal(bt.Table)
	if err != nil {
		return fmt.Errorf("state: create table %s: %w", bt.qualified(), err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	tables, ok := b.mu.tables[t.Keyspace]
	if !ok {
		return fmt.Errorf("%w: keyspace %s", ErrNotFound, t.Keyspace)
	}
	if _, ok := tables[t.Name]; ok {
		return fmt.Errorf("%w: table %s", ErrExists, bt.qualified())
	}
	id := b.mu.nextID
	batch := b.db.NewBatch()
	defer batch.Close()
	rec := binary.BigEndian.AppendUint64(nil, id)
	if err := batch.Set(embTableKey(t.Keyspace, t.Name), append(rec, def...), nil); err != nil {
		return fmt.Errorf("state: create table %s: %w", bt.qualified(), err)
	}
	if err := batch.Set([]byte{'N'}, binary.BigEndian.AppendUint64(nil, id+1), nil); err != nil {
		return fmt.Errorf("state: create table %s: %w", bt.qualified(), err)
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: create table %s: %w", bt.qualified(), err)
	}
	b.mu.nextID = id + 1
	tables[t.Name] = &embTable{id: id, bt: bt}
	return nil
}

// DropTable implements Backend.
func (b *EmbeddedBackend) DropTable(ctx context.Context, keyspace, name string) error {
	if err := validateKsTable(keyspace, name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.mu.tables[keyspace][name]
	if !ok {
		return fmt.Errorf("%w: table %s.%s", ErrNotFound, keyspace, name)
	}
	batch := b.db.NewBatch()
	defer batch.Close()
	if err := b.dropTableLocked(batch, t); err != nil {
		return fmt.Errorf("state: drop table %s.%s: %w", keyspace, name, err)
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: drop table %s.%s: %w", keyspace, name, err)
	}
	delete(b.mu.tables[keyspace], name)
	return nil
}

// Tables implements Backend.
func (b *EmbeddedBackend) Tables(ctx context.Context, keyspace string) ([]Table, error) {
	if err := ValidateIdentifier("keyspace", keyspace); err != nil {
		return nil, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	tables, ok := b.mu.tables[keyspace]
	if !ok {
		return nil, fmt.Errorf("%w: keyspace %s", ErrNotFound, keyspace)
	}
	out := make([]Table, 0, len(tables))
	for _, t := range tables {
		out = append(out, cloneTable(t.bt.Table))
	}
	slices.SortFunc(out, func(a, b Table) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Table implements Backend.
func (b *EmbeddedBackend) Table(ctx context.Context, keyspace, name string) (Table, error) {
	if err := validateKsTable(keyspace, name); err != nil {
		return Table{}, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	t, ok := b.mu.tables[keyspace][name]
	if !ok {
		return Table{}, fmt.Errorf("%w: table %s.%s", ErrNotFound, keyspace, name)
	}
	return cloneTable(t.bt.Table), nil
}

// tableRLocked returns the stored table that t names. ErrNotFound if there is none, or if it has
// another definition than t (dropped and created again since the caller read t). The caller holds
// mu shared.
func (b *EmbeddedBackend) tableRLocked(t Table) (*embTable, error) {
	et, ok := b.mu.tables[t.Keyspace][t.Name]
	if !ok {
		if err := validateKsTable(t.Keyspace, t.Name); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: table %s.%s", ErrNotFound, t.Keyspace, t.Name)
	}
	if !sameTable(et.bt.Table, t) {
		if err := t.Validate(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: table %s.%s has another definition now (dropped and created again?)", ErrNotFound, t.Keyspace, t.Name)
	}
	return et, nil
}

// embCell is the last write of one column: a value, or null (a deletion of the column), at ts.
type embCell struct {
	present bool
	ts      int64
	v       journal.Value
}

// newer reports whether c wins over old (Cassandra's reconciliation of two cells).
func (c embCell) newer(old embCell) bool {
	switch {
	case !old.present:
		return true
	case c.ts != old.ts:
		return c.ts > old.ts
	case c.v.Kind == journal.KindNull:
		return old.v.Kind != journal.KindNull
	case old.v.Kind == journal.KindNull:
		return false
	}
	return CompareValues(c.v, old.v) > 0
}

// embRecord is a stored row: its key values, its tombstone and one cell per regular column
// (regCol order) plus music_ts (last).
type embRecord struct {
	key     []journal.Value
	hasTomb bool
	tomb    int64
	cells   []embCell
}

func (r *embRecord) apply(m bkMutation) {
	if m.op == MutDelete {
		if !r.hasTomb || m.ts > r.tomb {
			r.hasTomb, r.tomb = true, m.ts
		}
		for i, c := range r.cells {
			if c.present && c.ts <= r.tomb {
				r.cells[i] = embCell{}
			}
		}
		return
	}
	if r.hasTomb && m.ts <= r.tomb {
		return // dead on arrival: the deletion is as new or newer
	}
	r.key = m.key
	merge := func(i int, v journal.Value) {
		if c := (embCell{present: true, ts: m.ts, v: v}); c.newer(r.cells[i]) {
			r.cells[i] = c
		}
	}
	for i, set := range m.set {
		if set {
			merge(i, m.vals[i])
		}
	}
	merge(len(r.cells)-1, journal.Int(m.ts))
}

// empty reports whether the record holds nothing worth keeping.
func (r *embRecord) empty() bool {
	if r.hasTomb {
		return false
	}
	for _, c := range r.cells {
		if c.present {
			return false
		}
	}
	return true
}

// stored returns the row as read; false if its music_ts cell is not live.
func (r *embRecord) stored(bt *bkTable) (StoredRow, bool) {
	ts := r.cells[len(r.cells)-1]
	if !ts.present || ts.v.Kind != journal.KindInt || (r.hasTomb && ts.ts <= r.tomb) {
		return StoredRow{}, false
	}
	row := StoredRow{Values: make(journal.Row, len(bt.Columns)), Version: ts.v.Int}
	for i, c := range bt.Columns {
		row.Values[i] = journal.Field{Name: c.Name, Value: journal.Null()}
	}
	for i, ci := range bt.keyCol {
		row.Values[ci].Value = r.key[i]
	}
	for i, ci := range bt.regCol {
		if c := r.cells[i]; c.present && (!r.hasTomb || c.ts > r.tomb) {
			row.Values[ci].Value = c.v
		}
	}
	return row, true
}

// Record encoding: version 1, flags (bit 0: tombstone), [tombstone (8)], key values, then for
// each present cell: uvarint column name length, name, timestamp (8), value. music_ts is named
// VersionColumn. Values are bkAppendValue encodings.
const embRecordVersion = 1

func (r *embRecord) encode(bt *bkTable) []byte {
	b := []byte{embRecordVersion, 0}
	if r.hasTomb {
		b[1] = 1
		b = binary.BigEndian.AppendUint64(b, uint64(r.tomb))
	}
	b = binary.AppendUvarint(b, uint64(len(r.key)))
	for _, v := range r.key {
		b = bkAppendValue(b, v)
	}
	for i, c := range r.cells {
		if !c.present {
			continue
		}
		name := VersionColumn
		if i < len(bt.regCol) {
			name = bt.Columns[bt.regCol[i]].Name
		}
		b = binary.AppendUvarint(b, uint64(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint64(b, uint64(c.ts))
		b = bkAppendValue(b, c.v)
	}
	return b
}

var errCorruptRecord = errors.New("corrupt row record")

func decodeEmbRecord(bt *bkTable, b []byte) (*embRecord, error) {
	r := &embRecord{cells: make([]embCell, len(bt.regCol)+1)}
	if len(b) < 2 || b[0] != embRecordVersion {
		return nil, errCorruptRecord
	}
	flags := b[1]
	b = b[2:]
	if flags&1 != 0 {
		if len(b) < 8 {
			return nil, errCorruptRecord
		}
		r.hasTomb, r.tomb = true, int64(binary.BigEndian.Uint64(b))
		b = b[8:]
	}
	n, w := binary.Uvarint(b)
	if w <= 0 || (n != 0 && n != uint64(len(bt.keyCol))) {
		return nil, errCorruptRecord
	}
	b = b[w:]
	var err error
	for range n {
		var v journal.Value
		if v, b, err = bkReadValue(b); err != nil {
			return nil, errCorruptRecord
		}
		r.key = append(r.key, v)
	}
	for len(b) > 0 {
		l, w := binary.Uvarint(b)
		if w <= 0 || l > uint64(len(b)-w) {
			return nil, errCorruptRecord
		}
		name := string(b[w : w+int(l)])
		b = b[w+int(l):]
		if len(b) < 8 {
			return nil, errCorruptRecord
		}
		c := embCell{present: true, ts: int64(binary.BigEndian.Uint64(b))}
		if c.v, b, err = bkReadValue(b[8:]); err != nil {
			return nil, errCorruptRecord
		}
		i := len(bt.regCol)
		if name != VersionColumn {
			var ok bool
			if i, ok = bt.regIdx[name]; !ok {
				return nil, errCorruptRecord
			}
		}
		r.cells[i] = c
	}
	if len(r.key) == 0 && !r.empty() && r.cells[len(r.cells)-1].present {
		return nil, errCorruptRecord
	}
	return r, nil
}

func (b *EmbeddedBackend) readRecord(bt *bkTable, key []byte) (*embRecord, error) {
	v, closer, err := b.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return &embRecord{cells: make([]embCell, len(bt.regCol)+1)}, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return decodeEmbRecord(bt, v)
}

func (b *EmbeddedBackend) stripe(key []byte) int {
	h := fnv.New32a()
	h.Write(key)
	return int(h.Sum32() % uint32(len(b.stripes)))
}

// Apply implements Backend: every mutation is validated first, then the rows are read, merged
// and written back in one synced batch, under their stripes (taken in order).
func (b *EmbeddedBackend) Apply(ctx context.Context, t Table, lv Level, ms ...Mutation) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	et, err := b.tableRLocked(t)
	if err != nil {
		return err
	}
	bt := et.bt
	muts := make([]bkMutation, len(ms))
	keys := make([][]byte, len(ms))
	var stripes []int
	for i, m := range ms {
		if muts[i], err = bt.checkMutation(m); err != nil {
			return err
		}
		keys[i] = bt.appendKeyValues(et.rowPrefix(), muts[i].key, len(bt.keyCol))
		stripes = append(stripes, b.stripe(keys[i]))
	}
	if len(muts) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, s := range stripes {
		b.stripes[s].Lock()
	}
	defer func() {
		for _, s := range stripes {
			b.stripes[s].Unlock()
		}
	}()
	what := "write table " + bt.qualified()
	recs := map[string]*embRecord{}
	var order []string
	for i, m := range muts {
		k := string(keys[i])
		r, ok := recs[k]
		if !ok {
			if r, err = b.readRecord(bt, keys[i]); err != nil {
				return fmt.Errorf("state: %s: %w", what, err)
			}
			recs[k] = r
			order = append(order, k)
		}
		r.apply(m)
	}
	batch := b.db.NewBatch()
	defer batch.Close()
	for _, k := range order {
		r := recs[k]
		if r.empty() {
			err = batch.Delete([]byte(k), nil)
		} else {
			err = batch.Set([]byte(k), r.encode(bt), nil)
		}
		if err != nil {
			return fmt.Errorf("state: %s: %w", what, err)
		}
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: %s: %w", what, err)
	}
	return nil
}

// Get implements Backend.
func (b *EmbeddedBackend) Get(ctx context.Context, t Table, lv Level, key journal.Row) (StoredRow, bool, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	et, err := b.tableRLocked(t)
	if err != nil {
		return StoredRow{}, false, err
	}
	k, err := et.bt.checkKey(key)
	if err != nil {
		return StoredRow{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return StoredRow{}, false, err
	}
	r, err := b.readRecord(et.bt, et.bt.appendKeyValues(et.rowPrefix(), k, len(k)))
	if err != nil {
		return StoredRow{}, false, fmt.Errorf("state: read table %s: %w", et.bt.qualified(), err)
	}
	row, ok := r.stored(et.bt)
	return row, ok, nil
}

// Select implements Backend: rows in key order (partition key, then clustering columns), read
// from the partition (and clustering prefix) the filters fix, or from the whole table. One call
// examines at most max(10*Limit, 1000) rows; it may then return fewer rows than Limit with a
// Next token. The token is the key of the last row examined; Next is empty exactly when no row
// follows.
func (b *EmbeddedBackend) Select(ctx context.Context, t Table, lv Level, q Query) (Page, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	et, err := b.tableRLocked(t)
	if err != nil {
		return Page{}, err
	}
	bt := et.bt
	bq, err := bt.checkQuery(q)
	if err != nil {
		return Page{}, err
	}
	prefix := et.rowPrefix()
	lower := prefix
	if n := bt.partitionPrefix(bq); n > 0 {
		key := make([]journal.Value, n)
		for i := range key {
			key[i] = bq.filters[bq.keyEq[i]].v
		}
		lower = bt.appendKeyValues(bytes.Clone(prefix), key, n)
	}
	upper := embPrefixEnd(lower)
	fp := bt.fingerprint('e', bq)
	if q.Page != "" {
		after, err := bkDecodeToken(q.Page, fp)
		if err != nil {
			return Page{}, fmt.Errorf("%w: table %s: %w", ErrInvalid, bt.qualified(), err)
		}
		start := append(append(bytes.Clone(prefix), after...), 0) // the first key after it
		if bytes.Compare(start, lower) > 0 {
			lower = start
		}
	}
	what := "select from table " + bt.qualified()
	if bytes.Compare(lower, upper) >= 0 {
		return Page{}, nil
	}
	it, err := b.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return Page{}, fmt.Errorf("state: %s: %w", what, err)
	}
	defer it.Close()
	var out Page
	examined := 0
	for valid := it.First(); valid; {
		if examined%256 == 255 {
			if err := ctx.Err(); err != nil {
				return Page{}, fmt.Errorf("state: %s: %w", what, err)
			}
		}
		examined++
		v, err := it.ValueAndErr()
		if err != nil {
			return Page{}, fmt.Errorf("state: %s: %w", what, err)
		}
		r, err := decodeEmbRecord(bt, v)
		if err != nil {
			return Page{}, fmt.Errorf("state: %s: key %x: %w", what, it.Key(), err)
		}
		if row, ok := r.stored(bt); ok && bq.matches(row.Values) {
			out.Rows = append(out.Rows, row)
		}
		if len(out.Rows) == bq.limit || examined >= bq.bound {
			last := bytes.Clone(it.Key()[len(prefix):])
			if it.Next() {
				out.Next = bkEncodeToken(fp, last)
			}
			break
		}
		valid = it.Next()
	}
	if err := it.Error(); err != nil {
		return Page{}, fmt.Errorf("state: %s: %w", what, err)
	}
	return out, nil
}

// embPrefixEnd returns the smallest key greater than every key starting with prefix.
func embPrefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xFF {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // cannot happen: row keys start with 'R'
}

// embPebbleLogger sends Pebble's log to slog.
type embPebbleLogger struct{ l *slog.Logger }

func (p embPebbleLogger) Infof(format string, args ...any)  { p.l.Debug(fmt.Sprintf(format, args...)) }
func (p embPebbleLogger) Errorf(format string, args ...any) { p.l.Error(fmt.Sprintf(format, args...)) }

// Fatalf must not return (Pebble's contract): the store is in a state it cannot continue from.
func (p embPebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg)
	panic("pebble: " + msg)
}

// PebbleLogger returns the Pebble logger the embedded store uses (Pebble's log into slog), for
// other embedded stores of the daemon (the queue).
func PebbleLogger(l *slog.Logger) pebble.Logger { return embPebbleLogger{l} }
