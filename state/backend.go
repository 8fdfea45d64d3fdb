package state

import (
	"context"
	"errors"

	"github.com/musicd/musicd/journal"
)

// Errors of the state package. Match with errors.Is; the REST API maps each to a status code.
var (
	// ErrInvalid: bad input (a name, a value, a definition, a page token). Nothing changed.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: no such keyspace, table or row.
	ErrNotFound = errors.New("not found")
	// ErrExists: the keyspace or table exists already (with another definition).
	ErrExists = errors.New("already exists")
	// ErrNotHolder: a critical operation came from a lock reference that does not hold the key's
	// lock (never did, released, expired, forced out, or fenced by a newer holder).
	ErrNotHolder = errors.New("not the lock holder")
	// ErrConditionFailed: a compare-and-set found another version or other column values.
	ErrConditionFailed = errors.New("condition failed")
	// ErrLocked: the key's lock stayed held by someone else until the deadline (LockedError
	// carries the holder).
	ErrLocked = errors.New("locked")
	// ErrUnavailable: a dependency (Cassandra, ZooKeeper, the journal) did not answer in time.
	ErrUnavailable = errors.New("dependency unavailable")
)

// Level is the consistency of one backend read or write.
type Level uint8

const (
	// LevelLocal: the local site only (eventual operations).
	LevelLocal Level = iota
	// LevelGlobal: a quorum across sites (critical and atomic operations, catch-up).
	LevelGlobal
)

// MutationOp is what a mutation does to a row.
type MutationOp uint8

const (
	// MutPut replaces the row: every regular column takes the given value, or null if not given.
	MutPut MutationOp = iota + 1
	// MutUpdate sets the given regular columns and leaves the others.
	MutUpdate
	// MutDelete removes the row.
	MutDelete
)

// Mutation is one change to one row, applied with last-writer-wins per column on Timestamp.
// Applying the same mutation twice, or an older one after a newer, changes nothing: that is what
// makes replaying journal entries safe.
type Mutation struct {
	Op MutationOp
	// Key holds every primary key column, in KeyColumns order.
	Key journal.Row
	// Values holds regular columns only (MutPut, MutUpdate); nil for MutDelete.
	Values journal.Row
	// Timestamp is the write timestamp in microseconds since the Unix epoch; it becomes the row's
	// version (VersionColumn) unless a newer change exists.
	Timestamp int64
}

// StoredRow is a row as read: every column of the table in declared order (nulls included) and
// the row's version (the newest write timestamp applied to it, microseconds).
type StoredRow struct {
	Values  journal.Row
	Version int64
}

// Filter restricts a select to rows whose column equals a value.
type Filter struct {
	Column string
	Value  journal.Value
}

// Query selects rows of one table: equality filters on any columns, at most Limit rows (1 to
// MaxPageRows), continuing after Page (a token from a previous Page.Next, or "" to start).
type Query struct {
	Filters []Filter
	Limit   int
	Page    string
}

// Page is one page of a select. Next is empty when there is nothing after it.
type Page struct {
	Rows []StoredRow
	Next string
}

// Backend stores keyspaces, tables and rows: Cassandra tables in distributed mode, Pebble in
// embedded mode. Both pass the conformance suite in backend_conformance_test.go. Every method is
// safe for concurrent use; errors wrap the sentinels above (a dependency failure wraps
// ErrUnavailable). Inputs are validated by the caller (Keyspace.Validate, Table.Validate, values
// of the right kinds), and again by the backend where a mistake could reach CQL.
type Backend interface {
	// CreateKeyspace creates a keyspace. ErrExists if it exists.
	CreateKeyspace(ctx context.Context, ks Keyspace) error
	// DropKeyspace drops a keyspace and its tables. ErrNotFound if it does not exist.
	DropKeyspace(ctx context.Context, name string) error
	// Keyspaces lists the keyspaces musicd created, by name.
	Keyspaces(ctx context.Context) ([]Keyspace, error)
	// Keyspace returns one keyspace. ErrNotFound if it does not exist.
	Keyspace(ctx context.Context, name string) (Keyspace, error)

	// CreateTable creates a table. ErrNotFound if the keyspace does not exist, ErrExists if the
	// table does.
	CreateTable(ctx context.Context, t Table) error
	// DropTable drops a table. ErrNotFound if it does not exist.
	DropTable(ctx context.Context, keyspace, name string) error
	// Tables lists the tables of a keyspace, by name. ErrNotFound if the keyspace does not exist.
	Tables(ctx context.Context, keyspace string) ([]Table, error)
	// Table returns one table's definition. ErrNotFound if it does not exist.
	Table(ctx context.Context, keyspace, name string) (Table, error)

	// Apply applies mutations to rows of table t (last-writer-wins per column on each
	// mutation's Timestamp). Mutations of the same row are applied in order.
	Apply(ctx context.Context, t Table, lv Level, ms ...Mutation) error
	// Get reads one row by its full primary key; false if there is none.
	Get(ctx context.Context, t Table, lv Level, key journal.Row) (StoredRow, bool, error)
	// Select reads rows matching q, in the store's order (partition token, then clustering).
	Select(ctx context.Context, t Table, lv Level, q Query) (Page, error)

	// Close releases the backend's resources (not a shared Cassandra session).
	Close() error
}
