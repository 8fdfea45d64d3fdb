package state

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/cenkalti/backoff/v4"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// eventualLog journals eventual writes. They do not go through the key's lock, so they cannot go
// into the key's stream (one writer per stream): each daemon has its own log of
// Config.EventualShards shards, a key always in the same shard. One goroutine per shard, elected
// (locks.RunElected on kvlog.<site>.<instance>.<shard>), writes the stream
// kvlog/<site>/<instance>/<shard>/<epoch> named after its leadership's epoch: no other writer of
// that stream can exist, so the journal commits its appends without a lightweight transaction
// (an exclusive stream, see journal.CassandraConfig.ExclusiveClasses). It group-commits what
// queued while its previous append ran. A write is acknowledged after its entry is durable and
// its row applied at the local site; across sites rows converge by last-writer-wins on the
// entries' timestamps.
//
// In distributed mode (the journal and the backend on one Cassandra session, the log's write
// consistency that of local row writes) the writer puts the rows in the append itself: one logged
// batch holds the entries, the head and the row writes, so the entry and its row take effect
// together, in one round trip per group instead of one per write. Otherwise each request applies
// its row after the append.
type eventualLog struct {
	s      *Service
	shards []*evShard
	rows   rowAppender       // nil: requests apply their rows after the append
	cass   *CassandraBackend // the backend that renders the row statements, with rows
}

// rowAppender is a journal whose appends can carry row writes (journal.CassandraStore).
type rowAppender interface {
	AppendWith(ctx context.Context, stream string, epoch uint64, entries []journal.Entry, stmts []journal.Statement) error
	WriteConsistency(stream string) gocql.Consistency
	Session() *gocql.Session
}

type evShard struct {
	prefix string // kvlog/<site>/<instance>/<shard>; the stream adds /<epoch>
	queue  chan *evWrite
}

type evWrite struct {
	entry  journal.Entry // Seq and HLC are set by the shard's writer
	stream string        // set by the writer with Seq
	table  Table
	done   chan error // buffered: the writer never blocks on it
	// row renders the row write at the entry's timestamp, for the writer to put in the append
	// (nil: the request applies the row after the append); size is what the write adds to a
	// batch. applied is set by the writer when the append carried the row.
	row     func(ts int64) journal.Statement
	size    int
	applied bool
}

// evQueue bounds the writes waiting for one shard (invariant 7); a full queue makes writers wait
// within their operation timeout.
const evQueue = 4096

// evRowsBytes bounds a group commit that carries rows (entries and rows), under Cassandra's
// default batch_size_warn_threshold (5 KiB), above which Cassandra logs a warning per batch. A
// write larger than that on its own is appended alone, its row applied by the request.
const evRowsBytes = 5 << 10

// maxEarlierStreams bounds the earlier streams of a shard handed to OnStream at a writer's start.
const maxEarlierStreams = 1000

func newEventualLog(s *Service) *eventualLog {
	l := &eventualLog{s: s}
	for i := range s.cfg.EventualShards {
		l.shards = append(l.shards, &evShard{
			prefix: "kvlog/" + s.cfg.Site + "/" + s.cfg.Instance + "/" + strconv.Itoa(i),
			queue:  make(chan *evWrite, evQueue),
		})
	}
	if ra, ok := s.journal.(rowAppender); ok {
		if cb, ok := s.backend.(*CassandraBackend); ok && cb.s == ra.Session() {
			if wc := ra.WriteConsistency(l.shards[0].prefix + "/1"); wc == cb.level(LevelLocal) {
				l.rows, l.cass = ra, cb
			} else {
				s.log.Info("eventual writes apply their rows after the append: the eventual log's write consistency differs from local row writes'",
					"journal", wc.String(), "rows", cb.level(LevelLocal).String())
			}
		}
	}
	return l
}

// write journals one eventual write, then applies it.
func (l *eventualLog) write(ctx context.Context, t Table, req WriteRequest) (WriteResult, error) {
	h := fnv.New32a()
	h.Write([]byte(newKeyID(t, req.Key).hash))
	sh := l.shards[h.Sum32()%uint32(len(l.shards))]
	w := &evWrite{
		entry: journal.Entry{
			Origin: l.s.cfg.Site, Source: journal.Source{RequestID: req.RequestID}, Tx: journal.Tx{Count: 1, Last: true},
			Op: opOf(req.Op), Database: t.Keyspace, Table: t.Name, Key: req.Key, After: req.Values,
		},
		table: t,
		done:  make(chan error, 1),
	}
	if l.rows != nil {
		m, _ := mutationOf(w.entry)
		var err error
		if w.row, w.size, err = l.cass.rowStatement(ctx, t, m); err != nil {
			return WriteResult{}, err
		}
		// The entry holds about what the row does, plus names.
		w.size = 2*w.size + 128 + len(t.Keyspace) + len(t.Name) + len(req.RequestID)
		for _, v := range req.Values {
			w.size += 2 * len(v.Name)
		}
	}
	select {
	case sh.queue <- w:
	case <-ctx.Done():
		return WriteResult{}, unavailable("queue the write for the eventual log", ctx.Err())
	}
	select {
	case err := <-w.done:
		if err != nil {
			return WriteResult{}, err
		}
	case <-ctx.Done():
		// The entry may still be journaled; the caller sees an unknown outcome.
		return WriteResult{}, unavailable("journal the write", ctx.Err())
	}
	m, _ := mutationOf(w.entry)
	if w.applied {
		return WriteResult{Version: m.Timestamp, Stream: w.stream, Seq: w.entry.Seq}, nil
	}
	if err := l.s.applyRetrying(ctx, t, LevelLocal, m); err != nil {
		return WriteResult{}, fmt.Errorf("the write is journaled (stream %s seq %d) but not yet applied: %w", w.stream, w.entry.Seq, err)
	}
	return WriteResult{Version: m.Timestamp, Stream: w.stream, Seq: w.entry.Seq}, nil
}

// run runs every shard's writer until ctx ends.
func (l *eventualLog) run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, sh := range l.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			election := strings.ReplaceAll(sh.prefix, "/", ".") // lock names have no slashes
			err := locks.RunElected(ctx, l.s.locks, election, l.s.cfg.Instance, l.s.log, func(ctx context.Context, epoch uint64) error {
				return l.writer(ctx, sh, epoch)
			})
			if err != nil && ctx.Err() == nil {
				l.s.log.Error("eventual log writer stopped", "shard", sh.prefix, "err", err)
			}
		}()
	}
	wg.Wait()
	// Fail what is still queued: nobody will journal it.
	for _, sh := range l.shards {
		for {
			select {
			case w := <-sh.queue:
				w.done <- fmt.Errorf("%w: shutting down", ErrUnavailable)
				continue
			default:
			}
			break
		}
	}
	return nil
}

// writer is one shard's group-commit loop, as the holder of epoch.
func (l *eventualLog) writer(ctx context.Context, sh *evShard, epoch uint64) error {
	s := l.s
	stream := sh.prefix + "/" + strconv.FormatUint(epoch, 10)
	fctx, cancel := s.opCtx(ctx)
	h, err := s.journal.Fence(fctx, stream, epoch)
	cancel()
	if err != nil {
		return fmt.Errorf("create %s: %w", stream, err)
	}
	if s.onStream != nil {
		// The shard's earlier streams too (earlier leaders of this instance): whatever of them
		// the change feed had not published when their writer stopped is published now.
		lctx, cancel := s.opCtx(ctx)
		earlier, err := s.journal.ListStreams(lctx, sh.prefix+"/", "", maxEarlierStreams)
		cancel()
		if err != nil {
			s.log.Warn("listing the eventual log's earlier streams", "shard", sh.prefix, "err", err)
		}
		for _, e := range earlier {
			if e != stream {
				s.onStream(e)
			}
		}
		s.onStream(stream)
	}
	head := h.Seq
	s.log.Info("eventual log writer started", "stream", stream, "epoch", epoch, "head", head, "rows_in_appends", l.rows != nil)
	batch := make([]*evWrite, 0, s.cfg.EventualBatch)
	entries := make([]journal.Entry, 0, s.cfg.EventualBatch)
	var stmts []journal.Statement
	var next *evWrite // taken from the queue, did not fit in the group before
	defer func() {
		if next != nil {
			next.done <- fmt.Errorf("%w: the eventual log's writer stopped", ErrUnavailable)
		}
	}()
	for {
		batch, entries, stmts = batch[:0], entries[:0], stmts[:0]
		if next != nil {
			batch, next = append(batch, next), nil
		} else {
			select {
			case <-ctx.Done():
				return nil
			case w := <-sh.queue:
				batch = append(batch, w)
			}
		}
		size := batch[0].size
	fill:
		for len(batch) < s.cfg.EventualBatch {
			select {
			case w := <-sh.queue:
				if l.rows != nil && size+w.size > evRowsBytes {
					next = w
					break fill
				}
				size += w.size
				batch = append(batch, w)
			default:
				break fill
			}
		}
		withRows := l.rows != nil && size <= evRowsBytes
		for i, w := range batch {
			w.entry.Seq = head + 1 + uint64(i)
			w.entry.HLC = s.clock.Now()
			entries = append(entries, w.entry)
			if withRows {
				stmts = append(stmts, w.row(micros(w.entry.HLC)))
			}
		}
		start := time.Now()
		err := l.appendRetrying(ctx, stream, epoch, entries, stmts)
		if errors.Is(err, journal.ErrRejected) {
			// Cassandra refused a row write (its table dropped meanwhile?), so nothing was
			// written: journal the entries alone; each request applies its row and learns why.
			s.log.Warn("eventual log: rows refused in the append; journaling the entries alone", "stream", stream, "err", err)
			withRows, stmts = false, stmts[:0]
			err = l.appendRetrying(ctx, stream, epoch, entries, nil)
		}
		s.metrics.evAppend.Observe(time.Since(start).Seconds())
		if err != nil {
			for _, w := range batch {
				w.done <- err
			}
			if errors.Is(err, ErrNotHolder) {
				return err // another daemon took the log over: campaign again
			}
			// Unknown outcome: Cassandra may still apply the batch (a write that timed out can
			// land later; a logged batch is replayed from the batch log), so its seqs must
			// never carry other entries. Retry this very batch until it commits; the requests
			// already answered that the outcome is unknown. New writes wait meanwhile.
			if err := l.untilCommitted(ctx, stream, epoch, entries, stmts); err != nil {
				return err // a new leadership writes a new stream
			}
			withRows = len(stmts) > 0
			if !withRows {
				// Nobody waits to apply the rows any more.
				for i, w := range batch {
					m, _ := mutationOf(entries[i])
					actx, cancel := s.opCtx(ctx)
					err := s.applyRetrying(actx, w.table, LevelLocal, m)
					cancel()
					if err != nil {
						s.log.Warn("eventual log: a committed write of unknown outcome could not be applied", "stream", stream, "seq", entries[i].Seq, "err", err)
					}
				}
			}
			batch = batch[:0] // answered
		}
		head += uint64(len(entries))
		s.metrics.evBatch.Observe(float64(len(entries)))
		if withRows {
			s.metrics.evRows.Add(float64(len(entries)))
		}
		s.appended(stream, head)
		for i, w := range batch {
			w.entry, w.stream, w.applied = entries[i], stream, withRows
			w.done <- nil
		}
	}
}

// untilCommitted retries a batch whose append failed with an unknown outcome until it commits,
// with backoff, while ctx lasts (the leadership). An error means the stream must be given up.
func (l *eventualLog) untilCommitted(ctx context.Context, stream string, epoch uint64, entries []journal.Entry, stmts []journal.Statement) error {
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0)), ctx)
	first, last := entries[0].Seq, entries[len(entries)-1].Seq
	return backoff.RetryNotify(func() error {
		err := l.appendRetrying(ctx, stream, epoch, entries, stmts)
		if err != nil && (ctx.Err() != nil || errors.Is(err, ErrNotHolder) || errors.Is(err, journal.ErrRejected) ||
			errors.Is(err, journal.ErrConflict) || errors.Is(err, journal.ErrInvalid)) {
			return backoff.Permanent(err)
		}
		if err == nil {
			l.s.log.Info("eventual log: a batch of unknown outcome is committed", "stream", stream, "first", first, "last", last)
		}
		return err
	}, b, func(err error, wait time.Duration) {
		l.s.log.Warn("eventual log: retrying a batch of unknown outcome", "stream", stream, "first", first, "last", last, "err", err, "in", wait)
	})
}

// appendRetrying appends a batch, with stmts (the rows) if any, retrying the same batch (the
// journal recognizes a retry of a batch that did commit) with backoff for up to the operation
// timeout.
func (l *eventualLog) appendRetrying(ctx context.Context, stream string, epoch uint64, entries []journal.Entry, stmts []journal.Statement) error {
	ctx, cancel := l.s.opCtx(ctx)
	defer cancel()
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(10*time.Millisecond),
		backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(0)), ctx)
	err := backoff.Retry(func() error {
		var err error
		if len(stmts) > 0 {
			err = l.rows.AppendWith(ctx, stream, epoch, entries, stmts)
		} else {
			err = l.s.journal.Append(ctx, stream, epoch, entries)
		}
		switch {
		case errors.Is(err, journal.ErrRejected):
			return backoff.Permanent(err)
		case errors.Is(err, journal.ErrFenced):
			return backoff.Permanent(fmt.Errorf("%w: eventual log %s: %v", ErrNotHolder, stream, err))
		case errors.Is(err, journal.ErrConflict), errors.Is(err, journal.ErrInvalid):
			return backoff.Permanent(unavailable("eventual log "+stream, err))
		}
		return err
	}, b)
	if err != nil && !errors.Is(err, ErrNotHolder) && !errors.Is(err, ErrUnavailable) && !errors.Is(err, journal.ErrRejected) {
		return unavailable("eventual log "+stream, err)
	}
	return err
}
