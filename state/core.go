package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// Config tunes the service. Start from DefaultConfig.
type Config struct {
	// Site is the origin recorded in journal entries.
	Site string `yaml:"-"`
	// Instance names this daemon's eventual log (streams kvlog/<site>/<instance>/<shard>). It
	// must be stable across restarts and unique among the daemons of a site: two daemons with
	// the same name take turns writing (the second waits for the first to stop).
	Instance string `yaml:"instance" help:"name of this daemon's eventual log, unique within the site (default: host name and API port)"`
	// OpTimeout bounds one operation, waits for locks excepted. Default 10s.
	OpTimeout time.Duration `yaml:"op_timeout" help:"time limit of one state operation (lock waits excepted)"`
	// LockLease is the lease of the locks atomic operations and conditional writes take for
	// themselves. Default 30s.
	LockLease time.Duration `yaml:"lock_lease" help:"lease of the locks taken by atomic operations"`
	// DefaultWait is how long an atomic operation waits for its lock when the request does not
	// say. Default 5s. MaxWait bounds what a request may ask. Default 60s.
	DefaultWait time.Duration `yaml:"default_wait" help:"how long atomic operations wait for a lock by default"`
	MaxWait     time.Duration `yaml:"max_wait" help:"longest lock wait a request may ask for"`
	// EventualShards is the number of streams of the eventual log, each group-committed by one
	// goroutine. Default 2.
	EventualShards int `yaml:"eventual_shards" help:"streams of this daemon's eventual log (parallel group commits)"`
	// EventualBatch bounds the writes of one group commit. Default 256.
	EventualBatch int `yaml:"eventual_batch" help:"most eventual writes journaled by one append"`
	// SchemaTTL is how long a table definition is cached. Default 2s.
	SchemaTTL time.Duration `yaml:"schema_ttl" help:"how long a table definition is cached"`
	// LocalConsistency and GlobalConsistency are the Cassandra consistency levels of row reads
	// and writes: eventual operations use the local one, critical and atomic ones the global one.
	LocalConsistency  string `yaml:"local_consistency" help:"Cassandra consistency of eventual row reads and writes: LOCAL_ONE, LOCAL_QUORUM, ONE, QUORUM"`
	GlobalConsistency string `yaml:"global_consistency" help:"Cassandra consistency of critical row reads and writes: QUORUM, EACH_QUORUM (writes), ALL"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		OpTimeout:      10 * time.Second,
		LockLease:      30 * time.Second,
		DefaultWait:    5 * time.Second,
		MaxWait:        60 * time.Second,
		EventualShards: 2,
		EventualBatch:  256,
		SchemaTTL:      2 * time.Second,

		LocalConsistency:  "LOCAL_QUORUM",
		GlobalConsistency: "QUORUM",
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"op_timeout", c.OpTimeout}, {"lock_lease", c.LockLease}, {"default_wait", c.DefaultWait}, {"max_wait", c.MaxWait}, {"schema_ttl", c.SchemaTTL}} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be a positive duration", d.name)
		}
	}
	if c.LockLease < time.Second || c.LockLease > locks.MaxLease {
		return fmt.Errorf("lock_lease: %s outside 1s-%s", c.LockLease, locks.MaxLease)
	}
	if c.DefaultWait > c.MaxWait {
		return fmt.Errorf("default_wait: %s is longer than max_wait %s", c.DefaultWait, c.MaxWait)
	}
	if c.EventualShards < 1 || c.EventualShards > 64 {
		return fmt.Errorf("eventual_shards: %d outside 1-64", c.EventualShards)
	}
	if c.EventualBatch < 1 || c.EventualBatch > journal.MaxBatchEntries {
		return fmt.Errorf("eventual_batch: %d outside 1-%d", c.EventualBatch, journal.MaxBatchEntries)
	}
	switch c.LocalConsistency {
	case "LOCAL_ONE", "LOCAL_QUORUM", "ONE", "QUORUM":
	default:
		return fmt.Errorf("local_consistency: %q is not LOCAL_ONE, LOCAL_QUORUM, ONE or QUORUM", c.LocalConsistency)
	}
	switch c.GlobalConsistency {
	case "QUORUM", "EACH_QUORUM", "ALL":
	default:
		return fmt.Errorf("global_consistency: %q is not QUORUM, EACH_QUORUM or ALL", c.GlobalConsistency)
	}
	if c.Instance != "" {
		if err := locks.ValidateName(c.Instance); err != nil {
			return fmt.Errorf("instance: %v", err)
		}
	}
	return nil
}

// Deps are the clients the service uses.
type Deps struct {
	Backend Backend
	Journal journal.Store
	Locks   locks.Service
	Clock   *journal.Clock
	Logger  *slog.Logger
	// Registerer receives the service's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// OnAppend is called after each append to a stream (the feeds relay and appliers use it).
	OnAppend func(stream string, seq uint64)
	// OnStream is called with each eventual-log stream this daemon starts writing, before its
	// first append, and with the earlier streams of the same shard (the feeds relay follows
	// them, so that what an earlier run did not publish is published).
	OnStream func(stream string)
}

// Service is the keyed state behind the REST API: keyspaces and tables in the backend, every
// write journaled first (critical ones in the key's stream under its lock's fencing token,
// eventual ones in this daemon's group-committed eventual log), then applied to the table.
type Service struct {
	cfg      Config
	backend  Backend
	journal  journal.Store
	locks    locks.Service
	clock    *journal.Clock
	log      *slog.Logger
	onAppnd  func(string, uint64)
	onStream func(string)
	metrics  *metrics

	// keys: what this process knows of key streams (a miss costs a catch-up). grants: the grants
	// it handed out or verified, trusted until their Lost channel closes; a grant lost in a way
	// this process cannot see is caught by the journal, which refuses the stale token.
	keys   *bounded[string, keyState]
	keyMu  keyLocks
	grants *bounded[LockRef, *locks.Grant]
	ev     *eventualLog

	schemaMu sync.Mutex
	schemas  map[string]cachedTable
}

type cachedTable struct {
	t       Table
	fetched time.Time
}

// New builds the service. Run must be running for eventual writes to be acknowledged.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Backend == nil || deps.Journal == nil || deps.Locks == nil || deps.Clock == nil || deps.Logger == nil {
		return nil, errors.New("state: Backend, Journal, Locks, Clock and Logger are required")
	}
	if cfg.Site == "" || cfg.Instance == "" {
		return nil, errors.New("state: Site and Instance are required")
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg: cfg, backend: deps.Backend, journal: deps.Journal, locks: deps.Locks, clock: deps.Clock,
		log: deps.Logger.With("component", "state"), onAppnd: deps.OnAppend, onStream: deps.OnStream, metrics: m,
		schemas: map[string]cachedTable{},
	}
	s.keys = newBounded[string, keyState](100_000)
	s.grants = newBounded[LockRef, *locks.Grant](100_000)
	s.ev = newEventualLog(s)
	return s, nil
}

// Run runs the eventual log's writers until ctx ends.
func (s *Service) Run(ctx context.Context) error { return s.ev.run(ctx) }

func (s *Service) appended(stream string, seq uint64) {
	if s.onAppnd != nil {
		s.onAppnd(stream, seq)
	}
}

// opCtx bounds one operation.
func (s *Service) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.OpTimeout)
}

// ---- keyspaces and tables ----

// CreateKeyspace creates a keyspace.
func (s *Service) CreateKeyspace(ctx context.Context, ks Keyspace) error {
	if err := ks.Validate(); err != nil {
		return err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.backend.CreateKeyspace(ctx, ks)
}

// DropKeyspace drops a keyspace and its tables.
func (s *Service) DropKeyspace(ctx context.Context, name string) error {
	if err := ValidateIdentifier("keyspace", name); err != nil {
		return err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	s.forgetSchemas(name, "")
	return s.backend.DropKeyspace(ctx, name)
}

// Keyspaces lists the keyspaces.
func (s *Service) Keyspaces(ctx context.Context) ([]Keyspace, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.backend.Keyspaces(ctx)
}

// Keyspace returns one keyspace.
func (s *Service) Keyspace(ctx context.Context, name string) (Keyspace, error) {
	if err := ValidateIdentifier("keyspace", name); err != nil {
		return Keyspace{}, err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.backend.Keyspace(ctx, name)
}

// CreateTable creates a table.
func (s *Service) CreateTable(ctx context.Context, t Table) error {
	if err := t.Validate(); err != nil {
		return err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.backend.CreateTable(ctx, t)
}

// DropTable drops a table.
func (s *Service) DropTable(ctx context.Context, keyspace, name string) error {
	if err := validateNames(keyspace, name); err != nil {
		return err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	s.forgetSchemas(keyspace, name)
	return s.backend.DropTable(ctx, keyspace, name)
}

// Tables lists the tables of a keyspace.
func (s *Service) Tables(ctx context.Context, keyspace string) ([]Table, error) {
	if err := ValidateIdentifier("keyspace", keyspace); err != nil {
		return nil, err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.backend.Tables(ctx, keyspace)
}

// Table returns a table's definition (cached for Config.SchemaTTL).
func (s *Service) Table(ctx context.Context, keyspace, name string) (Table, error) {
	if err := validateNames(keyspace, name); err != nil {
		return Table{}, err
	}
	key := keyspace + "." + name
	s.schemaMu.Lock()
	c, ok := s.schemas[key]
	s.schemaMu.Unlock()
	if ok && time.Since(c.fetched) < s.cfg.SchemaTTL {
		return c.t, nil
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	t, err := s.backend.Table(ctx, keyspace, name)
	if err != nil {
		return Table{}, err
	}
	s.schemaMu.Lock()
	s.schemas[key] = cachedTable{t: t, fetched: time.Now()}
	s.schemaMu.Unlock()
	return t, nil
}

func (s *Service) forgetSchemas(keyspace, table string) {
	s.schemaMu.Lock()
	defer s.schemaMu.Unlock()
	for k, c := range s.schemas {
		if c.t.Keyspace == keyspace && (table == "" || c.t.Name == table) {
			delete(s.schemas, k)
		}
	}
}

func validateNames(keyspace, table string) error {
	if err := ValidateIdentifier("keyspace", keyspace); err != nil {
		return err
	}
	return ValidateIdentifier("table", table)
}

// ---- rows ----

// Write writes one row at the consistency the request asks for.
func (s *Service) Write(ctx context.Context, req WriteRequest) (res WriteResult, err error) {
	start := time.Now()
	defer func() { s.metrics.observe("write", req.Consistency, start, err) }()
	t, err := s.Table(ctx, req.Keyspace, req.Table)
	if err != nil {
		return WriteResult{}, err
	}
	if err := s.checkWrite(t, &req); err != nil {
		return WriteResult{}, err
	}
	kid := newKeyID(t, req.Key)
	switch {
	case req.Consistency == Critical:
		ctx, cancel := s.opCtx(ctx)
		defer cancel()
		g, err := s.holder(ctx, req.Lock, kid)
		if err != nil {
			return WriteResult{}, err
		}
		return s.writeAsHolder(ctx, t, kid, g.Token, req)
	case req.Consistency == Atomic || !req.If.empty():
		err = s.atomically(ctx, t, req.Key, req.Wait, req.RequestID, func(ctx context.Context, token uint64) error {
			res, err = s.writeAsHolder(ctx, t, kid, token, req)
			return err
		})
		return res, err
	default:
		ctx, cancel := s.opCtx(ctx)
		defer cancel()
		return s.ev.write(ctx, t, req)
	}
}

// checkWrite validates a write request against the table.
func (s *Service) checkWrite(t Table, req *WriteRequest) error {
	switch req.Consistency {
	case Eventual, Critical, Atomic:
	default:
		return fmt.Errorf("%w: consistency %d", ErrInvalid, req.Consistency)
	}
	if req.Consistency == Critical && req.Lock == "" {
		return fmt.Errorf("%w: a critical operation needs the key's lock reference", ErrInvalid)
	}
	if err := checkKey(t, req.Key); err != nil {
		return err
	}
	switch req.Op {
	case MutPut, MutUpdate:
		if req.Op == MutUpdate && len(req.Values) == 0 {
			return fmt.Errorf("%w: an update needs at least one column value", ErrInvalid)
		}
	case MutDelete:
		if len(req.Values) > 0 {
			return fmt.Errorf("%w: a delete takes no values", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: unknown write operation %d", ErrInvalid, req.Op)
	}
	seen := map[string]bool{}
	for _, f := range req.Values {
		col, ok := t.Column(f.Name)
		if !ok || t.IsKey(f.Name) {
			return fmt.Errorf("%w: %q is not a regular column of %s.%s", ErrInvalid, f.Name, t.Keyspace, t.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: column %s given twice", ErrInvalid, f.Name)
		}
		seen[f.Name] = true
		if err := checkKind(col, f.Value); err != nil {
			return err
		}
	}
	if err := checkRowSize(req.Values); err != nil {
		return err
	}
	if req.If != nil {
		if req.If.Absent && (req.If.Exists || req.If.Version != 0 || len(req.If.Columns) > 0) {
			return fmt.Errorf("%w: a condition cannot ask for an absent row and for its contents", ErrInvalid)
		}
		for _, f := range req.If.Columns {
			col, ok := t.Column(f.Column)
			if !ok {
				return fmt.Errorf("%w: condition on unknown column %q", ErrInvalid, f.Column)
			}
			if err := checkKind(col, f.Value); err != nil {
				return err
			}
		}
	}
	if req.Wait < 0 || req.Wait > s.cfg.MaxWait {
		return fmt.Errorf("%w: wait %s outside 0-%s", ErrInvalid, req.Wait, s.cfg.MaxWait)
	}
	if len(req.RequestID) > 128 {
		return fmt.Errorf("%w: request id longer than 128 bytes", ErrInvalid)
	}
	return nil
}

// writeAsHolder journals a write in the key's stream under token, then applies it. The caller
// holds (or held) the key's lock with that token; the journal refuses the append if a newer
// holder fenced the stream.
func (s *Service) writeAsHolder(ctx context.Context, t Table, kid keyID, token uint64, req WriteRequest) (WriteResult, error) {
	stream := kid.stream()
	defer s.keyMu.lock(stream)()
	for attempt := 0; ; attempt++ {
		st, err := s.keyUpToDate(ctx, t, stream, token)
		if err != nil {
			return WriteResult{}, err
		}
		if !req.If.empty() {
			row, found, err := s.backend.Get(ctx, t, LevelGlobal, req.Key)
			if err != nil {
				return WriteResult{}, unavailable("read the row", err)
			}
			if err := req.If.check(row, found); err != nil {
				return WriteResult{}, err
			}
		}
		ts, err := s.stampAfter(st.last)
		if err != nil {
			return WriteResult{}, err
		}
		e := journal.Entry{
			Seq: st.seq + 1, HLC: ts, Origin: s.cfg.Site, Source: journal.Source{RequestID: req.RequestID},
			Tx: journal.Tx{Count: 1, Last: true}, Op: opOf(req.Op), Database: t.Keyspace, Table: t.Name,
			Key: req.Key, After: req.Values,
		}
		err = s.journal.Append(ctx, stream, token, []journal.Entry{e})
		switch {
		case err == nil:
		case errors.Is(err, journal.ErrFenced):
			s.keys.drop(stream)
			return WriteResult{}, fmt.Errorf("%w: a newer holder of the key's lock has written (%v)", ErrNotHolder, err)
		case errors.Is(err, journal.ErrConflict) && attempt < 4:
			s.keys.drop(stream) // another daemon appended: catch up and try again
			continue
		default:
			s.keys.drop(stream)
			return WriteResult{}, unavailable("journal the write", err)
		}
		s.appended(stream, e.Seq)
		m, _ := mutationOf(e)
		if err := s.applyRetrying(ctx, t, LevelGlobal, m); err != nil {
			s.keys.drop(stream) // the next operation on the key catches up
			return WriteResult{}, fmt.Errorf("the write is journaled (stream %s seq %d) but not yet applied: %w", stream, e.Seq, err)
		}
		s.keys.set(stream, keyState{seq: e.Seq, last: ts})
		return WriteResult{Version: micros(ts), Stream: stream, Seq: e.Seq}, nil
	}
}

// keyUpToDate returns what this process knows of the key stream, catching the table up to the
// stream's head first if it knows nothing. A head fenced above token means the caller does not
// hold the lock any more.
func (s *Service) keyUpToDate(ctx context.Context, t Table, stream string, token uint64) (keyState, error) {
	if st, ok := s.keys.get(stream); ok {
		return st, nil
	}
	h, err := s.journal.Head(ctx, stream)
	if err != nil {
		return keyState{}, unavailable("read the key stream's head", err)
	}
	if h.Epoch > token {
		return keyState{}, fmt.Errorf("%w: the key's stream is fenced at %d, above token %d", ErrNotHolder, h.Epoch, token)
	}
	st, n, err := s.catchUp(ctx, t, stream, h)
	if err != nil {
		return keyState{}, err
	}
	if n > 0 {
		s.metrics.caughtUp.Add(float64(n))
	}
	s.keys.set(stream, st)
	return st, nil
}

// applyRetrying applies mutations, retrying with backoff within ctx: once a write is journaled,
// giving up early would leave the table behind until the next catch-up.
func (s *Service) applyRetrying(ctx context.Context, t Table, lv Level, ms ...Mutation) error {
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(10*time.Millisecond),
		backoff.WithMaxInterval(500*time.Millisecond), backoff.WithMaxElapsedTime(0)), ctx)
	return backoff.Retry(func() error {
		err := s.backend.Apply(ctx, t, lv, ms...)
		if err != nil && !errors.Is(err, ErrUnavailable) {
			return backoff.Permanent(err)
		}
		return err
	}, b)
}

// check evaluates a condition against the row as read.
func (c *Condition) check(row StoredRow, found bool) error {
	if c.Absent {
		if found {
			return fmt.Errorf("%w: the row exists (version %d)", ErrConditionFailed, row.Version)
		}
		return nil
	}
	if !found {
		if c.Exists || c.Version != 0 || len(c.Columns) > 0 {
			return fmt.Errorf("%w: the row does not exist", ErrConditionFailed)
		}
		return nil
	}
	if c.Version != 0 && row.Version != c.Version {
		return fmt.Errorf("%w: the row's version is %d, not %d", ErrConditionFailed, row.Version, c.Version)
	}
	for _, f := range c.Columns {
		var got journal.Value
		for _, v := range row.Values {
			if v.Name == f.Column {
				got = v.Value
			}
		}
		if !got.Equal(f.Value) {
			return fmt.Errorf("%w: column %s does not have the expected value", ErrConditionFailed, f.Column)
		}
	}
	return nil
}

// Read reads one row at the consistency the request asks for. ErrNotFound if there is none.
func (s *Service) Read(ctx context.Context, req ReadRequest) (row StoredRow, err error) {
	start := time.Now()
	defer func() {
		if errors.Is(err, ErrNotFound) {
			s.metrics.observe("read", req.Consistency, start, nil)
			return
		}
		s.metrics.observe("read", req.Consistency, start, err)
	}()
	t, err := s.Table(ctx, req.Keyspace, req.Table)
	if err != nil {
		return StoredRow{}, err
	}
	if err := checkKey(t, req.Key); err != nil {
		return StoredRow{}, err
	}
	if req.Wait < 0 || req.Wait > s.cfg.MaxWait {
		return StoredRow{}, fmt.Errorf("%w: wait %s outside 0-%s", ErrInvalid, req.Wait, s.cfg.MaxWait)
	}
	kid := newKeyID(t, req.Key)
	var found bool
	switch req.Consistency {
	case Eventual:
		ctx, cancel := s.opCtx(ctx)
		defer cancel()
		row, found, err = s.backend.Get(ctx, t, LevelLocal, req.Key)
	case Critical:
		if req.Lock == "" {
			return StoredRow{}, fmt.Errorf("%w: a critical operation needs the key's lock reference", ErrInvalid)
		}
		ctx, cancel := s.opCtx(ctx)
		defer cancel()
		g, err := s.holder(ctx, req.Lock, kid)
		if err != nil {
			return StoredRow{}, err
		}
		row, found, err = s.readAsHolder(ctx, t, kid, g.Token, req.Key)
		if err != nil {
			return StoredRow{}, err
		}
	case Atomic:
		err = s.atomically(ctx, t, req.Key, req.Wait, "", func(ctx context.Context, token uint64) error {
			var err error
			row, found, err = s.readAsHolder(ctx, t, kid, token, req.Key)
			return err
		})
	default:
		return StoredRow{}, fmt.Errorf("%w: consistency %d", ErrInvalid, req.Consistency)
	}
	if err != nil {
		return StoredRow{}, err
	}
	if !found {
		return StoredRow{}, fmt.Errorf("%w: no row with that key in %s.%s", ErrNotFound, t.Keyspace, t.Name)
	}
	return row, nil
}

// readAsHolder reads a row for the holder of token: it checks, in the journal, that no newer
// holder fenced the key's stream, and that the table holds every entry up to the head.
func (s *Service) readAsHolder(ctx context.Context, t Table, kid keyID, token uint64, key journal.Row) (StoredRow, bool, error) {
	stream := kid.stream()
	h, err := s.journal.Head(ctx, stream)
	if err != nil {
		return StoredRow{}, false, unavailable("read the key stream's head", err)
	}
	if h.Epoch > token {
		return StoredRow{}, false, fmt.Errorf("%w: the key's stream is fenced at %d, above token %d", ErrNotHolder, h.Epoch, token)
	}
	if st, ok := s.keys.get(stream); !ok || st.seq != h.Seq {
		unlock := s.keyMu.lock(stream)
		s.keys.drop(stream)
		_, err := s.keyUpToDate(ctx, t, stream, token)
		unlock()
		if err != nil {
			return StoredRow{}, false, err
		}
	}
	return s.backend.Get(ctx, t, LevelGlobal, key)
}

// Select reads rows matching q: eventual reads the local site, critical a quorum of all sites.
func (s *Service) Select(ctx context.Context, keyspace, table string, q Query, c Consistency) (p Page, err error) {
	start := time.Now()
	defer func() { s.metrics.observe("select", c, start, err) }()
	t, err := s.Table(ctx, keyspace, table)
	if err != nil {
		return Page{}, err
	}
	if q.Limit == 0 {
		q.Limit = DefaultPageRows
	}
	if q.Limit < 0 || q.Limit > MaxPageRows {
		return Page{}, fmt.Errorf("%w: limit %d outside 1-%d", ErrInvalid, q.Limit, MaxPageRows)
	}
	for _, f := range q.Filters {
		col, ok := t.Column(f.Column)
		if !ok {
			return Page{}, fmt.Errorf("%w: no column %q to filter on", ErrInvalid, f.Column)
		}
		if err := checkKind(col, f.Value); err != nil {
			return Page{}, err
		}
	}
	lv := LevelLocal
	switch c {
	case Eventual:
	case Critical:
		lv = LevelGlobal
	default:
		return Page{}, fmt.Errorf("%w: a select is eventual or critical (a quorum read), not %s", ErrInvalid, c)
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.backend.Select(ctx, t, lv, q)
}
