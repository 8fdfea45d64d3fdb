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
type eventualLog struct {
	s      *Service
	shards []*evShard
}

type evShard struct {
	prefix string // kvlog/<site>/<instance>/<shard>; the stream adds /<epoch>
	queue  chan *evWrite
}

type evWrite struct {
	entry  journal.Entry // Seq and HLC are set by the shard's writer
	stream string        // set by the writer with Seq
	done   chan error    // buffered: the writer never blocks on it
}

// evQueue bounds the writes waiting for one shard (invariant 7); a full queue makes writers wait
// within their operation timeout.
const evQueue = 4096

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
		done: make(chan error, 1),
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
	s.log.Info("eventual log writer started", "stream", stream, "epoch", epoch, "head", head)
	batch := make([]*evWrite, 0, s.cfg.EventualBatch)
	entries := make([]journal.Entry, 0, s.cfg.EventualBatch)
	for {
		batch, entries = batch[:0], entries[:0]
		select {
		case <-ctx.Done():
			return nil
		case w := <-sh.queue:
			batch = append(batch, w)
		}
	fill:
		for len(batch) < s.cfg.EventualBatch {
			select {
			case w := <-sh.queue:
				batch = append(batch, w)
			default:
				break fill
			}
		}
		for i, w := range batch {
			w.entry.Seq = head + 1 + uint64(i)
			w.entry.HLC = s.clock.Now()
			entries = append(entries, w.entry)
		}
		start := time.Now()
		err := l.appendRetrying(ctx, stream, epoch, entries)
		s.metrics.evAppend.Observe(time.Since(start).Seconds())
		if err != nil {
			for _, w := range batch {
				w.done <- err
			}
			if errors.Is(err, ErrNotHolder) {
				return err // another daemon took the log over: campaign again
			}
			// Unknown outcome: learn the head again before the next batch.
			hctx, cancel := s.opCtx(ctx)
			h, herr := s.journal.Head(hctx, stream)
			cancel()
			if herr != nil {
				return fmt.Errorf("%s: head after a failed append: %w", stream, herr)
			}
			head = h.Seq
			continue
		}
		head += uint64(len(batch))
		s.metrics.evBatch.Observe(float64(len(batch)))
		s.appended(stream, head)
		for i, w := range batch {
			w.entry, w.stream = entries[i], stream
			w.done <- nil
		}
	}
}

// appendRetrying appends a batch, retrying the same batch (the journal recognizes a retry of a
// batch that did commit) with backoff for up to the operation timeout.
func (l *eventualLog) appendRetrying(ctx context.Context, stream string, epoch uint64, entries []journal.Entry) error {
	ctx, cancel := l.s.opCtx(ctx)
	defer cancel()
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(10*time.Millisecond),
		backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(0)), ctx)
	err := backoff.Retry(func() error {
		err := l.s.journal.Append(ctx, stream, epoch, entries)
		switch {
		case errors.Is(err, journal.ErrFenced):
			return backoff.Permanent(fmt.Errorf("%w: eventual log %s: %v", ErrNotHolder, stream, err))
		case errors.Is(err, journal.ErrConflict), errors.Is(err, journal.ErrInvalid):
			return backoff.Permanent(unavailable("eventual log "+stream, err))
		}
		return err
	}, b)
	if err != nil && !errors.Is(err, ErrNotHolder) && !errors.Is(err, ErrUnavailable) {
		return unavailable("eventual log "+stream, err)
	}
	return err
}
