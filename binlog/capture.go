package binlog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// CaptureConfig configures the capture of one source.
type CaptureConfig struct {
	Source SourceConfig
	// Site is this site's id; the capture writes stream "binlog/<site>/<source name>".
	Site string
	// ChunkEntries bounds the entries of a transaction held in memory: a larger transaction is
	// journaled in chunks of this many entries, which readers join by Tx (Index, Last). Default 1000.
	ChunkEntries int
	// MarkInterval: when transactions pass that touch no captured table, a mark entry records the
	// new position at most this often, so that a restart does not re-read them. Default 10s.
	MarkInterval time.Duration
	// OnAppend, if set, is called after each successful append with the stream and its new last
	// seq (the feeds relay's fast path), in order, by one goroutine at a time (not the one calling
	// Run). It must not block.
	OnAppend func(stream string, seq uint64)
	// OnJournaled, if set, is given the entries of each successful append (after OnAppend's
	// stream has them), on the goroutine that calls OnAppend: it must not block nor keep the
	// slice.
	// Ownership checks captured rows with it (rows written at a site that does not own them).
	OnJournaled func(stream string, entries []journal.Entry)
	// Metrics, if set, receives the capture's figures.
	Metrics *Metrics
	// AppliedClocks, if set, is the meta database of the applier that writes other sites'
	// changes into this source's database (its row_clock table). A snapshot leaves out the rows
	// whose last writer, by that table, is another site: they came from there (which has them,
	// or a later version), and journaling them again as this site's would echo them back.
	AppliedClocks string
}

// Capture reads one source's binary log into its journal stream. Run is its driver loop; one
// goroutine runs it at a time.
type Capture struct {
	cfg          CaptureConfig
	store        journal.Store
	clock        *journal.Clock
	logger       *slog.Logger
	snapProgress atomic.Pointer[SnapshotProgress]
	snapChunks   atomic.Uint64
}

// SnapshotProgress returns the state of the capture's initial snapshots as of its last run
// (zero before the first): safe to call from any goroutine.
func (c *Capture) SnapshotProgress() SnapshotProgress {
	if p := c.snapProgress.Load(); p != nil {
		return *p
	}
	return SnapshotProgress{}
}

// ErrNotCapturable is returned (wrapped) by Run when the server's settings rule capture out; the
// message says what to change. Retrying does not help.
var ErrNotCapturable = errors.New("binlog: source cannot be captured")

// NewCapture returns a capture of cfg.Source into store.
func NewCapture(cfg CaptureConfig, store journal.Store, clock *journal.Clock, logger *slog.Logger) *Capture {
	if cfg.ChunkEntries <= 0 {
		cfg.ChunkEntries = 1000
	}
	cfg.ChunkEntries = min(cfg.ChunkEntries, journal.MaxBatchEntries)
	if cfg.MarkInterval <= 0 {
		cfg.MarkInterval = 10 * time.Second
	}
	cfg.Source = cfg.Source.WithDefaults()
	return &Capture{cfg: cfg, store: store, clock: clock, logger: logger.With("source", cfg.Source.Name)}
}

// Stream is the journal stream this capture writes.
func (c *Capture) Stream() string { return "binlog/" + c.cfg.Site + "/" + c.cfg.Source.Name }

// Run captures until ctx ends (returning nil) or an error. epoch is the capture's fencing token:
// the stream is fenced to it first, so a capture that lost its election can no longer append
// (journal.ErrFenced). Run resumes after the last transaction in the journal: no transaction is
// lost, none journaled twice. Errors other than ErrNotCapturable and journal.ErrFenced are
// transient: the caller runs Run again after a pause (see Supervise).
func (c *Capture) Run(ctx context.Context, epoch uint64) (err error) {
	defer func() {
		if ctx.Err() != nil {
			err = nil // stopped: whatever failed, failed because of it
		}
	}()
	src := c.cfg.Source
	conn, err := Connect(ctx, src)
	if err != nil {
		return err
	}
	if err := checkServer(ctx, conn, src); err != nil {
		conn.Close()
		return fmt.Errorf("%w: %v", ErrNotCapturable, err)
	}
	maxlen, err := collationMaxLen(conn)
	if err != nil {
		conn.Close()
		return err
	}
	head, err := c.store.Fence(ctx, c.Stream(), epoch)
	if err != nil {
		conn.Close()
		return err
	}
	w := &txWriter{c: c, epoch: epoch, next: head.Seq + 1, cols: newColumnTracker(maxlen, src.Flavor == mysql.MariaDBFlavor)}
	position, err := w.resume(ctx, head)
	if err == nil && position == "" && head.Seq == 0 {
		// A new stream: start from the configured position or the server's current one,
		// recorded as entry 1.
		position = src.StartPosition
		if position == "" {
			position, err = currentPosition(conn, src.Flavor)
		}
		if err == nil {
			w.position = position
			if err = w.mark(ctx, "start", position); err == nil {
				err = w.flush(ctx)
			}
		}
	}
	w.position, w.cutTx = position, w.skip > 0
	if err == nil {
		// Which tables still need a snapshot: recorded in the stream (state marks).
		if err = w.loadSnapshot(ctx, conn, head); err == nil {
			err = w.flush(ctx)
		}
	}
	conn.Close()
	defer w.snap.close()
	if err != nil {
		return err
	}
	c.logger.Info("capture starting", "stream", c.Stream(), "epoch", epoch, "position", position, "next_seq", w.next, "skip", w.skip)

	host, portStr, _ := net.SplitHostPort(src.Addr)
	port, _ := strconv.Atoi(portStr)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	semiSync := src.Tables.HasMode(policies.ModeSync)
	g := &gate{ctx: runCtx, events: make(chan gated, 256), waitCommits: semiSync} // bounds memory held ahead of the journal
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: src.ServerID, Flavor: src.Flavor, Host: host, Port: uint16(port), User: src.User, Password: src.Password,
		UseDecimal: true, TimestampStringLocation: time.UTC, RowsEventDecodeFunc: decodeRows,
		// go-mysql would retry forever; our caller retries with backoff instead.
		MaxReconnectAttempts: 1, DisableRetrySync: true,
		HeartbeatPeriod: 5 * time.Second, ReadTimeout: 30 * time.Second,
		// A semi-synchronous replica when the source has sync tables: go-mysql acknowledges a
		// transaction after the gate returns from its commit event, which for a transaction
		// touching a sync table is after its journal batch is durable.
		SemiSyncEnabled:         semiSync,
		SynchronousEventHandler: g,
		Logger:                  c.logger.With("component", "go-mysql"),
	})
	defer func() {
		cancel() // releases go-mysql's goroutine if it waits in the gate
		syncer.Close()
	}()
	var gset mysql.GTIDSet
	if src.Flavor == mysql.MariaDBFlavor {
		gset, err = mysql.ParseMariadbGTIDSet(position)
	} else {
		gset, err = mysql.ParseMysqlGTIDSet(position)
	}
	if err != nil {
		return fmt.Errorf("source %s: position %q: %w", src.Name, position, err)
	}
	streamer, err := syncer.StartSyncGTID(gset)
	if err != nil {
		return fmt.Errorf("source %s: start at %s: %w", src.Name, position, err)
	}
	// With a synchronous handler the streamer only reports the syncer's errors.
	syncErr := make(chan error, 1)
	go func() { // ends when runCtx ends or the syncer fails
		_, err := streamer.GetEvent(runCtx)
		syncErr <- err
	}()
	// From here on groups are appended by the appender's goroutine, while this one reads on.
	w.startAppender(runCtx)
	defer func() {
		cancel()
		<-w.app.done // nothing is appended once Run has returned
	}()
	for {
		if w.snap != nil && w.gtid == "" {
			// Between transactions: journal a snapshot chunk whose position is reached, or read
			// the next one (the loop waits meanwhile, so the chunk's position is not passed).
			if err := w.snap.step(runCtx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		ev, err := w.nextEvent(runCtx, g, syncErr)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if ev.ev == nil {
			continue // the group was handed to the appender
		}
		err = w.event(runCtx, ev.ev)
		if ev.ack != nil {
			ev.ack <- err // lets go-mysql acknowledge the transaction (semi-sync)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// gate hands events from go-mysql's reading goroutine to the capture loop. It returns from a
// commit event (XID or QUERY) only once the loop has handled it: go-mysql sends the semi-sync
// acknowledgement of a transaction after that.
type gate struct {
	ctx         context.Context
	events      chan gated
	waitCommits bool // semi-sync: hold go-mysql at each commit until the loop has handled it
}

type gated struct {
	ev  *replication.BinlogEvent
	ack chan error // commit events: the loop's result
}

// HandleEvent implements replication.EventHandler.
func (g *gate) HandleEvent(e *replication.BinlogEvent) error {
	var ack chan error
	switch e.Event.(type) {
	case *replication.XIDEvent, *replication.QueryEvent:
		if g.waitCommits {
			ack = make(chan error, 1)
		}
	}
	select {
	case g.events <- gated{ev: e, ack: ack}:
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
	if ack == nil {
		return nil
	}
	select {
	case err := <-ack:
		return err
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
}

// nextEvent returns the next binlog event. With committed entries queued, it appends them as soon
// as the binlog has no event ready and no append is in flight (waiting then would only delay
// them); while an append is in flight, the group grows until that append ends or the group has
// waited groupDelay (group commit: one journal sync for what committed meanwhile). It returns a
// zero gated after such an append. Its errors are the syncer's (wrapped as such), the journal's,
// or ctx's.
func (w *txWriter) nextEvent(ctx context.Context, g *gate, syncErr <-chan error) (gated, error) {
	var idle <-chan time.Time
	var appended <-chan struct{}
	if len(w.pending) > 0 {
		waited := time.Since(w.pendingSince)
		if waited >= groupDelay {
			return gated{}, w.flush(ctx)
		}
		select {
		case ev := <-g.events: // events are flowing: the group grows
			return ev, nil
		default:
		}
		if w.app.inFlight.Load() == 0 {
			return gated{}, w.flush(ctx) // nothing to share a sync with
		}
		if w.idle == nil {
			w.idle = time.NewTimer(groupDelay - waited)
		} else {
			w.idle.Reset(groupDelay - waited) // since Go 1.23 no stale tick is left to receive
		}
		defer w.idle.Stop()
		idle, appended = w.idle.C, w.app.finished
	}
	select {
	case ev := <-g.events:
		return ev, nil
	case <-idle:
		return gated{}, w.flush(ctx) // waited groupDelay
	case <-appended:
		return gated{}, w.flush(ctx) // the append in flight ended: this group is next
	case err := <-syncErr:
		return gated{}, fmt.Errorf("source %s: reading the binlog: %w", w.c.cfg.Source.Name, err)
	case <-w.app.done:
		return gated{}, w.app.err
	case <-w.snap.wake():
		return gated{}, nil // a snapshot chunk to read
	case <-ctx.Done():
		return gated{}, ctx.Err()
	}
}

// Supervise runs Run again after transient errors, with exponential backoff (at most a minute
// apart), until ctx ends or the error is permanent (ErrNotCapturable, journal.ErrFenced,
// journal.ErrConflict).
func (c *Capture) Supervise(ctx context.Context, epoch uint64) error {
	b := backoff.NewExponentialBackOff()
	b.MaxInterval = time.Minute
	b.MaxElapsedTime = 0 // a capture keeps trying while it is the elected one; ctx ends it
	for {
		start := time.Now()
		err := c.Run(ctx, epoch)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			return nil
		case errors.Is(err, ErrNotCapturable), errors.Is(err, journal.ErrFenced), errors.Is(err, journal.ErrConflict):
			return err
		}
		if time.Since(start) > time.Minute {
			b.Reset() // it ran for a while: start the backoff over
		}
		wait := b.NextBackOff()
		c.logger.Warn("capture failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// txWriter assembles binlog events into journal batches: the pure part of the capture, plus
// the appends.
type txWriter struct {
	c     *Capture
	epoch uint64
	next  uint64 // seq of the next entry

	// Resuming in the middle of a transaction: its first skip entries are already journaled.
	skipTx string
	skip   uint32

	file   string // current binlog file
	tables map[uint64]*tableSchema
	cols   *columnTracker // the captured tables' columns, for DDL entries
	// The transaction being counted by the metrics and the tables it changed so far (used by
	// whoever appends: see app).
	metricTx     string
	metricTables []tableRef
	gtid         string // current transaction's GTID ("" outside one)
	index        uint32 // entries of the current transaction so far
	buf          []journal.Entry
	fields       fieldSlab       // the rows' fields
	txSync       bool            // the current transaction touches a sync table
	bufBytes     int             // encoded size of buf (or a bound of it, see add)
	bytesChunked bool            // the current transaction was chunked for its size in bytes
	pending      []journal.Entry // committed entries waiting for the next append (queue)
	pendingBytes int             // encoded size of pending
	pendingSince time.Time
	idle         *time.Timer // nextEvent's, reused
	commitTime   uint32      // source commit time (binlog event header, seconds) of the last transaction read

	// app appends the groups once the capture reads the binlog (nil before: appends are
	// synchronous). While it runs, it alone uses next, skipTx and skip.
	app       *appender
	lastWrite atomic.Pointer[time.Time] // end of the last append; nil: none yet
	lastHand  time.Time                 // when the last group was handed to app

	// Snapshots (snapshot.go): the state, the GTID position after the last transaction read, and
	// binlog coordinates (see track).
	snap       *snapshotter
	position   string
	pos        binPos
	stateAt    binPos
	stateKnown bool
	sawTx      bool
	sinceState int  // entries queued since the last snapshot state mark
	cutTx      bool // resuming inside a transaction, not read again yet (the loop's copy of skip > 0)
}

// appender journals the groups the capture loop hands it, in order, one append each, in
// goroutines of their own, so that the loop reads and decodes the next transactions while a group
// is made durable. One goroutine applies the groups; where the store can apply a batch before its
// sync (the embedded store's AppendNoWait), a second one waits for each group's sync and then
// reports it journaled, while the first applies the next group. At most appendQueue groups wait
// at each step: memory stays bounded, and the loop waits when the journal is slower than the
// binlog, as it did when it appended itself.
type appender struct {
	groups   chan group           // to append, in order
	free     chan []journal.Entry // buffers of journaled groups, for reuse
	done     chan struct{}        // closed when both goroutines have stopped
	err      error                // why they stopped (read after done is closed)
	inFlight atomic.Int32         // groups handed over and not yet applied
	finished chan struct{}        // signalled (buffer 1) each time a group is applied
}

type group struct {
	es         []journal.Entry // empty: a barrier
	commitTime uint32          // w.commitTime when the group was handed over (lag metric)
	durable    chan struct{}   // if set, closed once this group and all before it are journaled
	wait       func() error    // set once applied, if the store left the sync to wait for
}

const appendQueue = 2

// noWaitAppender is a store that can apply a batch and leave the wait for its sync to the caller
// (journal.EmbeddedStore).
type noWaitAppender interface {
	AppendNoWait(ctx context.Context, stream string, epoch uint64, entries []journal.Entry) (wait func() error, err error)
}

// startAppender starts the appender's goroutines; they stop when ctx ends or an append fails, and
// append nothing after a failure (the capture stops, and resumes from the journal).
func (w *txWriter) startAppender(ctx context.Context) {
	// Up to appendQueue groups wait to be applied and as many to be synced, one of each is being
	// applied and synced, and one is being filled: their buffers go round without reallocation.
	a := &appender{groups: make(chan group, appendQueue), free: make(chan []journal.Entry, 2*appendQueue+2), done: make(chan struct{}),
		finished: make(chan struct{}, 1)}
	w.app = a
	ctx, cancel := context.WithCancel(ctx)
	applied := make(chan group, appendQueue) // closed when the applying goroutine stops
	var applyErr error                       // why it stopped (read once applied is closed)
	go func() {
		defer close(applied)
		for {
			var g group
			select {
			case g = <-a.groups:
			case <-ctx.Done():
				applyErr = ctx.Err()
				return
			}
			if len(g.es) > 0 {
				var err error
				if g.es, g.wait, err = w.apply(ctx, g.es); err != nil {
					applyErr = err
					return
				}
			}
			a.inFlight.Add(-1)
			select {
			case a.finished <- struct{}{}:
			default:
			}
			select {
			case applied <- g:
			case <-ctx.Done():
				if g.wait != nil {
					_ = g.wait() // the store's wait must be called
				}
				applyErr = ctx.Err()
				return
			}
		}
	}()
	go func() {
		var err error
		defer func() {
			cancel()
			for g := range applied { // until the applying goroutine has stopped
				if g.wait != nil {
					_ = g.wait()
				}
			}
			a.err = cmp.Or(err, applyErr)
			close(a.done)
		}()
		for g := range applied {
			if g.wait != nil {
				if err = g.wait(); err != nil {
					err = fmt.Errorf("source %s: journal %d entries at %d: %w", w.c.cfg.Source.Name, len(g.es), g.es[0].Seq, err)
					return
				}
			}
			if len(g.es) > 0 {
				if err = w.journaled(ctx, g.es, g.commitTime); err != nil {
					return
				}
			}
			if g.durable != nil {
				close(g.durable)
			}
			clear(g.es) // drop the rows' memory now
			select {
			case a.free <- g.es[:0]:
			default:
			}
		}
	}()
}

// hand passes the queued group to the appender and starts a new one.
func (w *txWriter) hand(ctx context.Context, durable chan struct{}) error {
	a := w.app
	a.inFlight.Add(1)
	select {
	case a.groups <- group{es: w.pending, commitTime: w.commitTime, durable: durable}:
	case <-a.done:
		return a.err
	case <-ctx.Done():
		return ctx.Err()
	}
	w.lastHand, w.pendingBytes = time.Now(), 0
	select {
	case w.pending = <-a.free:
	default:
		w.pending = make([]journal.Entry, 0, w.c.cfg.ChunkEntries)
	}
	return nil
}

// sinceLastWrite is the time since the last append ended (very long if none has), or since a group
// was last handed to the appender, whichever is shorter: a group in flight counts as written, as
// it did when the capture loop appended groups itself (and waited).
func (w *txWriter) sinceLastWrite() time.Duration {
	since := time.Duration(math.MaxInt64)
	if t := w.lastWrite.Load(); t != nil {
		since = time.Since(*t)
	}
	if !w.lastHand.IsZero() {
		since = min(since, time.Since(w.lastHand))
	}
	return since
}

// resume finds where to restart from the stream's tail: the position recorded on the last
// complete transaction, and how many entries of an incomplete one are already there.
func (w *txWriter) resume(ctx context.Context, head journal.Head) (string, error) {
	if head.Seq == 0 {
		return "", nil
	}
	last, err := w.entry(ctx, head.Seq)
	if err != nil {
		return "", err
	}
	if last.Tx.Last {
		return last.Source.Position, nil
	}
	// A transaction cut off after some chunks: its entries 0..Index are journaled.
	w.skipTx, w.skip = last.Tx.ID, last.Tx.Index+1
	prev, err := w.entry(ctx, head.Seq-uint64(w.skip))
	if err != nil {
		return "", err
	}
	if !prev.Tx.Last {
		return "", fmt.Errorf("stream %s: entry %d before the incomplete transaction %s does not end a transaction", w.c.Stream(), prev.Seq, w.skipTx)
	}
	return prev.Source.Position, nil
}

func (w *txWriter) entry(ctx context.Context, seq uint64) (journal.Entry, error) {
	es, err := w.c.store.Read(ctx, w.c.Stream(), seq, 1)
	if err != nil {
		return journal.Entry{}, err
	}
	if len(es) != 1 {
		return journal.Entry{}, fmt.Errorf("stream %s: entry %d not readable", w.c.Stream(), seq)
	}
	return es[0], nil
}

// mark journals a position with no data change.
func (w *txWriter) mark(ctx context.Context, why, position string) error {
	e := journal.Entry{Op: journal.OpMark, Statement: why, Tx: journal.Tx{ID: w.gtid, Count: 1, Last: true}}
	e.Source.GTID, e.Source.File, e.Source.Position = w.gtid, w.file, position
	return w.queue(ctx, []journal.Entry{e}, journal.EncodedSize(&e))
}

// queue adds entries to the group of the next append. Several small transactions share one
// append (one journal batch: all or none), which amortizes the store's sync or lightweight
// transaction; the group is appended once it holds ChunkEntries entries, when no event is ready
// and no append is in flight, when the append in flight ends, or after groupDelay (see
// nextEvent), so memory stays bounded.
// size is the encoded size of es, as add measured it (fields set at commit, a few bytes an entry,
// are not counted: groupBytes is far below the journal's limit).
func (w *txWriter) queue(ctx context.Context, es []journal.Entry, size int) error {
	// A group stays within groupBytes and the journal's entries per batch: flush what waits
	// first if es would take it past either.
	if len(w.pending) > 0 && (w.pendingBytes+size > groupBytes || len(w.pending)+len(es) > journal.MaxBatchEntries) {
		if err := w.flush(ctx); err != nil {
			return err
		}
	}
	if len(w.pending) == 0 {
		w.pendingSince = time.Now()
	}
	w.pending = append(w.pending, es...)
	w.pendingBytes += size
	if last := &es[len(es)-1]; last.Op == journal.OpMark && last.Statement == stateStatement {
		w.sinceState = 0
	} else {
		w.sinceState += len(es)
	}
	if len(w.pending) >= w.c.cfg.ChunkEntries || w.pendingBytes >= groupBytes {
		return w.flush(ctx)
	}
	return nil
}

// groupBytes bounds the encoded entries of one append, well below journal.MaxBatchBytes: a
// transaction of large rows is journaled in chunks of at most this size (plus one entry, at most
// journal.MaxEntryBytes), whatever ChunkEntries says.
const groupBytes = 8 << 20

// flush appends the queued group, or hands it to the appender once there is one.
func (w *txWriter) flush(ctx context.Context) error {
	if len(w.pending) == 0 {
		return nil
	}
	w.pendingBytes = 0
	if w.app != nil {
		return w.hand(ctx, nil)
	}
	es, wait, err := w.apply(ctx, w.pending)
	if err == nil && wait != nil {
		err = wait()
	}
	if err == nil && len(es) > 0 {
		err = w.journaled(ctx, es, w.commitTime)
	}
	w.pending = w.pending[:0]
	return err
}

// flushDurable appends the queued group and returns once it and every group before it are
// durable in the journal.
func (w *txWriter) flushDurable(ctx context.Context) error {
	if w.app == nil {
		return w.flush(ctx)
	}
	durable := make(chan struct{})
	if err := w.hand(ctx, durable); err != nil { // an empty group is a barrier
		return err
	}
	select {
	case <-durable:
		return nil
	case <-w.app.done:
		return w.app.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// groupDelay bounds how long a committed transaction waits for others to share its append.
const groupDelay = 10 * time.Millisecond

// event handles one binlog event.
func (w *txWriter) event(ctx context.Context, ev *replication.BinlogEvent) error {
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		w.file = string(e.NextLogName)
	case *replication.MariadbGTIDEvent:
		w.begin(fmt.Sprintf("%d-%d-%d", e.GTID.DomainID, e.GTID.ServerID, e.GTID.SequenceNumber))
	case *replication.GTIDEvent:
		w.begin(fmt.Sprintf("%x:%d", e.SID, e.GNO))
	case *replication.TableMapEvent:
		if w.tables == nil {
			w.tables = map[uint64]*tableSchema{}
		}
		if !w.c.cfg.Source.Tables.Selected(string(e.Schema), string(e.Table)) {
			delete(w.tables, e.TableID)
			return nil
		}
		s, err := newTableSchema(e)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotCapturable, err)
		}
		s.sync = w.c.cfg.Source.Tables.ModeOf(s.database, s.table) == policies.ModeSync
		w.tables[e.TableID] = s
		w.cols.tableMap(s, e)
	case *replication.RowsEvent:
		return w.rows(ctx, ev.Header, e)
	case *replication.XIDEvent:
		if err := w.commit(ctx, ev.Header, e.GSet); err != nil {
			return err
		}
	case *replication.QueryEvent:
		if err := w.query(ctx, ev.Header, e); err != nil {
			return err
		}
	}
	w.track(ev)
	return nil
}

func (w *txWriter) begin(gtid string) {
	w.gtid, w.index, w.buf, w.txSync, w.bufBytes, w.bytesChunked = gtid, 0, w.buf[:0], false, 0, false
}

// skipReplicationFlag marks events written by a session with skip_replication=1 (MariaDB's
// LOG_EVENT_SKIP_REPLICATION_F): musicd's appliers write so, and capture leaves those events out,
// so that changes applied from other sites are not journaled again here (no echo). Native replicas
// still receive them (their replicate_events_marked_for_skip defaults to REPLICATE).
const skipReplicationFlag = 0x8000

func (w *txWriter) rows(ctx context.Context, h *replication.EventHeader, e *replication.RowsEvent) error {
	s, ok := w.tables[e.TableID]
	if !ok || h.Flags&skipReplicationFlag != 0 {
		return nil // not a captured table, or written by an applier
	}
	w.txSync = w.txSync || s.sync
	var op journal.Op
	step := 1
	// MariaDB writes rows events compressed (the _COMPRESSED_ types) when log_bin_compress is
	// on; go-mysql decompresses them as it decodes them (goMySQLRows). Any other rows event
	// (MySQL's partial JSON updates) does not carry whole rows: the capture stops rather than
	// lose the change.
	switch h.EventType {
	case replication.WRITE_ROWS_EVENTv0, replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2,
		replication.MARIADB_WRITE_ROWS_COMPRESSED_EVENT_V1:
		op = journal.OpInsert
	case replication.UPDATE_ROWS_EVENTv0, replication.UPDATE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv2,
		replication.MARIADB_UPDATE_ROWS_COMPRESSED_EVENT_V1:
		op, step = journal.OpUpdate, 2
	case replication.DELETE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv2,
		replication.MARIADB_DELETE_ROWS_COMPRESSED_EVENT_V1:
		op = journal.OpDelete
	default:
		return fmt.Errorf("%w: source %s gtid %s: table %s.%s: rows event %s does not carry whole rows (binlog_row_value_options must be empty)",
			ErrNotCapturable, w.c.cfg.Source.Name, w.gtid, s.database, s.table, h.EventType)
	}
	imgs, deferred := deferredImages(e)
	fast := deferred && s.fast && !compressed(h.EventType) && int(e.ColumnCount) == len(s.names) &&
		fullBitmap(e.ColumnBitmap1, len(s.names)) && (step == 1 || fullBitmap(e.ColumnBitmap2, len(s.names)))
	if deferred && !fast {
		if err := goMySQLRows(e, imgs); err != nil {
			return fmt.Errorf("source %s gtid %s: table %s.%s: %w", w.c.cfg.Source.Name, w.gtid, s.database, s.table, err)
		}
	}
	// next decodes the next row image: the key is taken from the only image of an insert or
	// delete, from the after image of an update.
	data, i := imgs.data[imgs.pos:], 0
	more := func() bool {
		if fast {
			return len(data) > 0
		}
		return i+step <= len(e.Rows)
	}
	// next also returns a bound of the row's encoding, which bounds its key's too; -1 for rows
	// that go-mysql decoded (add measures those).
	next := func(withKey bool) (journal.Row, journal.Row, int, error) {
		if !fast {
			i++
			r, k, err := s.rowKey(e.Rows[i-1], withKey, &w.fields)
			return r, k, -1, err
		}
		r, k, n, bound, err := s.imageRow(data, withKey, &w.fields)
		data = data[n:]
		return r, k, bound, err
	}
	for more() {
		first, key, bound, err := next(op != journal.OpUpdate)
		if err != nil {
			return fmt.Errorf("source %s gtid %s: %w", w.c.cfg.Source.Name, w.gtid, err)
		}
		entry := journal.Entry{Op: op, Database: s.database, Table: s.table, SchemaVersion: s.version}
		rowBytes := 2 * bound // the row and its key
		switch op {
		case journal.OpInsert:
			entry.After, entry.Key = first, key
		case journal.OpDelete:
			entry.Before, entry.Key = first, key
		case journal.OpUpdate:
			after, key, afterBound, err := next(true)
			if err != nil {
				return fmt.Errorf("source %s gtid %s: %w", w.c.cfg.Source.Name, w.gtid, err)
			}
			entry.Before, entry.After, entry.Key = first, after, key
			rowBytes = bound + 2*afterBound
		}
		if !fast {
			rowBytes = -1
		}
		if err := w.add(ctx, h, entry, rowBytes); err != nil {
			return err
		}
	}
	return nil
}

// compressed reports whether t is a compressed rows event type (decompressed by go-mysql when it
// decodes the rows).
func compressed(t replication.EventType) bool {
	return t == replication.MARIADB_WRITE_ROWS_COMPRESSED_EVENT_V1 || t == replication.MARIADB_UPDATE_ROWS_COMPRESSED_EVENT_V1 ||
		t == replication.MARIADB_DELETE_ROWS_COMPRESSED_EVENT_V1
}

// add puts an entry of the current transaction in the buffer, journaling a chunk when the
// buffer outgrows ChunkEntries (one entry always stays, to carry the end of the transaction).
// rowBytes, when not negative, bounds the encoding of e's rows (journal.RowSizeBound): add then
// measures only the rest of e, not its rows again.
func (w *txWriter) add(ctx context.Context, h *replication.EventHeader, e journal.Entry, rowBytes int) error {
	e.Origin = w.c.cfg.Site
	e.Source.GTID, e.Source.File, e.Source.Pos = w.gtid, w.file, uint64(h.LogPos)
	e.Tx = journal.Tx{ID: w.gtid, Index: w.index}
	w.index++
	var size int
	if rowBytes < 0 {
		size = journal.EncodedSize(&e)
	} else {
		rest := e
		rest.Key, rest.Before, rest.After = nil, nil, nil
		size = journal.EncodedSize(&rest) + rowBytes
	}
	w.buf = append(w.buf, e)
	w.bufBytes += size
	bytesFull := w.bufBytes > groupBytes && len(w.buf) > 1
	if len(w.buf) > w.c.cfg.ChunkEntries || bytesFull {
		n := len(w.buf) - 1
		if err := w.queue(ctx, w.buf[:n], w.bufBytes-size); err != nil {
			return err
		}
		w.buf = append(w.buf[:0], w.buf[n:]...)
		w.bufBytes = size
		w.bytesChunked = w.bytesChunked || bytesFull
	}
	return nil
}

// commit ends the current transaction: its last chunk carries Tx.Last and the resume position.
func (w *txWriter) commit(ctx context.Context, h *replication.EventHeader, gset mysql.GTIDSet) (err error) {
	w.commitTime = h.Timestamp
	position := ""
	if gset != nil {
		position = gset.String()
		w.position = position
	}
	defer func() { w.gtid, w.buf, w.cutTx = "", w.buf[:0], false }()
	if w.snap != nil && w.sinceState >= stateEvery {
		// Keeps the last state mark near the tail: a restart reads little to find it.
		defer func() {
			if err == nil {
				err = w.snap.queueState(ctx)
			}
		}()
	}
	if len(w.buf) == 0 {
		if w.sinceLastWrite() >= w.c.cfg.MarkInterval {
			return w.mark(ctx, "position", position)
		}
		return nil
	}
	last := &w.buf[len(w.buf)-1]
	last.Tx.Last, last.Source.Position = true, position
	if w.index <= uint32(w.c.cfg.ChunkEntries)+1 && !w.bytesChunked {
		for i := range w.buf {
			w.buf[i].Tx.Count = w.index // the whole transaction was held: its size is known
		}
	}
	if err := w.queue(ctx, w.buf, w.bufBytes); err != nil {
		return err
	}
	if w.txSync {
		return w.flushDurable(ctx) // durable before the source is acknowledged (semi-sync)
	}
	return nil
}

var (
	txControlRe = regexp.MustCompile(`(?i)^\s*(BEGIN|COMMIT|ROLLBACK|XA\s|SAVEPOINT|RELEASE\s+SAVEPOINT)`)
	tableDDLRe  = regexp.MustCompile("(?is)^\\s*(?:/\\*.*?\\*/\\s*)*(?:CREATE|ALTER|DROP|TRUNCATE|RENAME|OPTIMIZE|REPAIR|ANALYZE)\\s+(?:ONLINE\\s+|IGNORE\\s+|OR\\s+REPLACE\\s+|TEMPORARY\\s+)*TABLES?\\s+(?:IF\\s+(?:NOT\\s+)?EXISTS\\s+)?((?:`[^`]+`|[\\w$]+)(?:\\.(?:`[^`]+`|[\\w$]+))?)")
	dbDDLRe     = regexp.MustCompile(`(?i)^\s*(CREATE|ALTER|DROP)\s+(DATABASE|SCHEMA)\b`)
)

// query handles a QUERY event: transaction control, or a DDL statement (its own transaction).
func (w *txWriter) query(ctx context.Context, h *replication.EventHeader, e *replication.QueryEvent) error {
	stmt := string(e.Query)
	if m := txControlRe.FindStringSubmatch(stmt); m != nil {
		if strings.EqualFold(m[1], "COMMIT") {
			return w.commit(ctx, h, e.GSet) // a transaction of a non-transactional engine
		}
		return nil
	}
	if h.Flags&skipReplicationFlag != 0 {
		return w.commit(ctx, h, e.GSet) // a schema change applied from another site
	}
	db, table := string(e.Schema), ""
	if m := tableDDLRe.FindStringSubmatch(stmt); m != nil {
		name := strings.ReplaceAll(m[1], "`", "")
		if d, t, ok := strings.Cut(name, "."); ok {
			db, table = d, t
		} else {
			table = name
		}
		if !w.c.cfg.Source.Tables.Selected(db, table) {
			return w.commit(ctx, h, e.GSet)
		}
	} else if dbDDLRe.MatchString(stmt) {
		return w.commit(ctx, h, e.GSet) // databases are not replicated objects
	} else {
		w.c.logger.Warn("statement not understood; journaled as DDL without a table", "gtid", w.gtid, "statement", truncate(stmt, 200))
	}
	w.snap.ddl(db, table, stmt)
	entry := journal.Entry{Op: journal.OpDDL, Database: db, Table: table, Statement: stmt}
	if table != "" {
		cols, known, err := w.cols.ddl(string(e.Schema), stmt)
		switch {
		case err != nil:
			w.c.logger.Warn("DDL journaled without its resulting columns: the statement could not be read", "gtid", w.gtid, "statement", truncate(stmt, 200), "err", err)
		case known:
			entry.Columns = cols
		default:
			w.c.logger.Info("DDL journaled without its resulting columns: the table's columns before it are not known", "gtid", w.gtid, "table", db+"."+table)
		}
	}
	if err := w.add(ctx, h, entry, -1); err != nil {
		return err
	}
	return w.commit(ctx, h, e.GSet)
}

// apply appends a group with seqs from w.next, dropping entries already journaled before a
// restart, retrying transient errors with backoff (the same batch again is safe). It returns the
// entries appended (possibly none). If the store leaves the sync to its caller, they are journaled
// once wait returns; else wait is nil and they are journaled on return.
func (w *txWriter) apply(ctx context.Context, es []journal.Entry) (_ []journal.Entry, wait func() error, err error) {
	if w.skip > 0 {
		kept := make([]journal.Entry, 0, len(es))
		for _, e := range es {
			if e.Tx.ID != w.skipTx || e.Tx.Index >= w.skip {
				kept = append(kept, e)
			}
		}
		// Once the capture has produced the last entry journaled before the restart, or moved
		// past that transaction, nothing more is skipped.
		if last := es[len(es)-1]; last.Tx.ID != w.skipTx || last.Tx.Index+1 >= w.skip {
			w.skip = 0
		}
		if es = kept; len(es) == 0 {
			return es, nil, nil
		}
	}
	w.c.clock.NowN(len(es), func(i int, t journal.Timestamp) {
		es[i].Seq, es[i].HLC = w.next+uint64(i), t
	})
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(2*time.Minute)), ctx)
	err = backoff.Retry(func() error {
		var err error
		if nw, ok := w.c.store.(noWaitAppender); ok {
			wait, err = nw.AppendNoWait(ctx, w.c.Stream(), w.epoch, es)
		} else {
			err = w.c.store.Append(ctx, w.c.Stream(), w.epoch, es)
		}
		if errors.Is(err, journal.ErrFenced) || errors.Is(err, journal.ErrConflict) || errors.Is(err, journal.ErrInvalid) {
			return backoff.Permanent(err)
		}
		return err
	}, b)
	if err != nil {
		return nil, nil, fmt.Errorf("source %s: journal %d entries at %d (gtid %s): %w", w.c.cfg.Source.Name, len(es), w.next, es[0].Tx.ID, err)
	}
	w.next += uint64(len(es))
	return es, wait, nil
}

// journaled records a journaled group (after apply, and its wait if any): the snapshot state's
// seq, the time of the last write, metrics, and the OnAppend and OnJournaled callbacks.
func (w *txWriter) journaled(ctx context.Context, es []journal.Entry, commitTime uint32) error {
	for i := len(es) - 1; i >= 0; i-- {
		if e := &es[i]; e.Op == journal.OpMark && e.Statement == stateStatement {
			// Where a restart finds the snapshot state (a later mark, if this fails).
			if err := w.c.store.SetPosition(ctx, SnapshotConsumer, w.c.Stream(), e.Seq-1); err != nil {
				return fmt.Errorf("source %s: recording the snapshot state's seq: %w", w.c.cfg.Source.Name, err)
			}
			break
		}
	}
	now := time.Now()
	w.lastWrite.Store(&now)
	if cfg := w.c.cfg; cfg.Metrics != nil {
		// Counted per batch: one update per table and operation, not per row.
		type rowsOf struct {
			database, table string
			op              journal.Op
		}
		rows, txs, txTables := map[rowsOf]int{}, 0, map[tableRef]int{}
		for i := range es {
			e := &es[i]
			switch e.Op {
			case journal.OpInsert, journal.OpUpdate, journal.OpDelete, journal.OpRead:
				rows[rowsOf{e.Database, e.Table, e.Op}]++
			}
			if e.Op == journal.OpMark || e.Op == journal.OpRead {
				continue
			}
			// The tables of the transaction, across its chunks (batches come in order, a
			// transaction's entries are contiguous).
			if e.Tx.ID != w.metricTx {
				w.metricTx, w.metricTables = e.Tx.ID, w.metricTables[:0]
			}
			if t := (tableRef{e.Database, e.Table}); e.Table != "" && !slices.Contains(w.metricTables, t) {
				w.metricTables = append(w.metricTables, t)
			}
			if e.Tx.Last {
				txs++
				for _, t := range w.metricTables {
					txTables[t]++
				}
				w.metricTx, w.metricTables = "", w.metricTables[:0]
			}
		}
		for t, n := range txTables {
			cfg.Metrics.txt.WithLabelValues(cfg.Source.Name, t.String()).Add(float64(n))
		}
		for k, n := range rows {
			if k.op == journal.OpRead {
				cfg.Metrics.snapRows.WithLabelValues(cfg.Source.Name, k.database+"."+k.table).Add(float64(n))
				continue
			}
			cfg.Metrics.rows.WithLabelValues(cfg.Source.Name, k.database+"."+k.table, k.op.String()).Add(float64(n))
		}
		if txs > 0 {
			cfg.Metrics.txs.WithLabelValues(cfg.Source.Name).Add(float64(txs))
		}
		if commitTime > 0 {
			cfg.Metrics.lag.WithLabelValues(cfg.Source.Name).Set(time.Since(time.Unix(int64(commitTime), 0)).Seconds())
		}
	}
	if w.c.cfg.OnAppend != nil {
		w.c.cfg.OnAppend(w.c.Stream(), es[len(es)-1].Seq)
	}
	if w.c.cfg.OnJournaled != nil {
		w.c.cfg.OnJournaled(w.c.Stream(), es)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
