package feeds

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/journal"
)

// RelayConsumer is the journal consumer name under which the relay records, per stream, the last
// seq confirmed in the change feed. While registered it holds the journal's trimming back.
const RelayConsumer = "feeds-relay"

// Relay publishes the entries of the journal streams it owns to the change feed: every entry
// once per (stream, seq) in the JetStream stream, in seq order per stream, whatever its source.
//
// Which streams an instance relays is decided outside: Own and Disown (RunOwnedElected drives
// them from the stream's relay election), Follow for short-lived writers such as key streams
// (relayed until idle), and RunSweeper for what a crashed appender left unpublished. Two relays
// of one stream at once (a hand-over, a first sweep) cost duplicates, which JetStream's
// de-duplication and the Sequencer drop, never an entry.
//
// Paths: Notify, called by an appender after a successful Append, wakes the relay at once (the
// fast path); on start, on every wake and every cfg.Relay.PollInterval, the relay reads each
// stream from its position (journal consumer RelayConsumer) to the head (the catch-up path), so
// nothing is missed across crashes, NATS outages or appends by other instances. Publications are
// asynchronous with at most cfg.Relay.MaxInFlight awaiting acknowledgement; an entry is
// confirmed when JetStream has stored it after the entry before (see order.go); positions are
// saved after confirmation, in batches, so a crash re-publishes at most the unsaved tail, which
// JetStream drops by message id within its duplicate window.
//
// While NATS fails, the relay retries with exponential backoff (capped at
// cfg.Relay.RetryMaxInterval) for as long as it runs, never skipping an entry: the journal
// keeps them, and the backlog goes out in order when NATS is back.
//
// One goroutine, Run's, owns the relay's per-stream state; Own, Disown, Notify and Confirmed are
// safe for concurrent use and never block on I/O.
type Relay struct {
	cfg      RelayConfig
	stream   StreamConfig
	subjects Subjects
	nc       *nats.Conn
	js       jetstream.JetStream
	store    journal.Store
	site     string
	logger   *slog.Logger
	m        *relayMetrics
	wake     chan struct{} // capacity 1: wake-ups coalesce

	mu struct {
		sync.Mutex
		running   bool
		owned     map[string]bool      // streams to relay
		followed  map[string]time.Time // streams to relay until idle: last Follow or Notify
		notified  map[string]uint64    // streams notified since Run last looked, highest seq
		confirmed map[string]uint64    // last seq confirmed per owned stream, as of Run's last turn
	}
}

// NewRelay returns a relay publishing entries of store to NATS through conn. site names the
// origin of entries that carry none. Metrics are registered on reg (nil: not registered).
func NewRelay(cfg Config, conn *Conn, store journal.Store, site string, logger *slog.Logger, reg prometheus.Registerer) (*Relay, error) {
	if err := cfg.Stream.validate(); err != nil {
		return nil, err
	}
	if err := cfg.Relay.validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(conn.NC,
		jetstream.WithPublishAsyncMaxPending(cfg.Relay.MaxInFlight+1), // +1: the anchor
		jetstream.WithPublishAsyncTimeout(cfg.Relay.AckTimeout))
	if err != nil {
		return nil, fmt.Errorf("feeds: relay: %w", err)
	}
	m, err := newRelayMetrics(reg)
	if err != nil {
		return nil, err
	}
	r := &Relay{
		cfg: cfg.Relay, stream: cfg.Stream, subjects: Subjects{Prefix: cfg.Stream.SubjectPrefix},
		nc: conn.NC, js: js, store: store, site: site, logger: logger.With("component", "feeds-relay"),
		m: m, wake: make(chan struct{}, 1),
	}
	r.mu.owned = map[string]bool{}
	r.mu.followed = map[string]time.Time{}
	r.mu.notified = map[string]uint64{}
	r.mu.confirmed = map[string]uint64{}
	return r, nil
}

// Own makes the relay publish stream, from its saved position on. It fails only for an invalid
// stream id.
func (r *Relay) Own(stream string) error {
	if err := journal.ValidateStreamID(stream); err != nil {
		return err
	}
	r.mu.Lock()
	r.mu.owned[stream] = true
	r.mu.Unlock()
	r.signal()
	return nil
}

// Disown stops relaying stream (its confirmed position is saved first). Publications in flight
// may still complete; the next owner re-publishes them, and JetStream drops the duplicates.
func (r *Relay) Disown(stream string) {
	r.mu.Lock()
	delete(r.mu.owned, stream)
	if !r.relays(stream) {
		delete(r.mu.notified, stream)
	}
	r.mu.Unlock()
	r.signal()
}

// Follow makes the relay publish stream, from its saved position on, until the stream has been
// idle (no Follow or Notify) for cfg.Relay.FollowIdle with everything up to its head confirmed
// and the position saved. It is for the many short-lived writers of key streams (one per key of
// the REST API): whoever appends follows, and the sweeper (RunSweeper) follows what an appender
// that crashed left unpublished. seq is the stream's head as the caller knows it (0: unknown).
// It fails only for an invalid stream id.
func (r *Relay) Follow(stream string, seq uint64) error {
	if err := journal.ValidateStreamID(stream); err != nil {
		return err
	}
	r.mu.Lock()
	r.mu.followed[stream] = time.Now()
	r.mu.notified[stream] = max(r.mu.notified[stream], seq)
	r.mu.Unlock()
	r.signal()
	return nil
}

// Notify tells the relay that stream has entries up to seq. Appenders call it after a successful
// Append. It never blocks; notifications of a stream coalesce, and those of a stream the relay
// neither owns nor follows are ignored (its owner finds the entries by polling).
func (r *Relay) Notify(stream string, seq uint64) {
	r.mu.Lock()
	_, followed := r.mu.followed[stream]
	if followed {
		r.mu.followed[stream] = time.Now()
	}
	if followed || r.mu.owned[stream] {
		r.mu.notified[stream] = max(r.mu.notified[stream], seq)
	}
	r.mu.Unlock()
	r.signal()
}

// relays reports whether the relay owns or follows stream. Callers hold r.mu.
func (r *Relay) relays(stream string) bool {
	_, followed := r.mu.followed[stream]
	return followed || r.mu.owned[stream]
}

// Relaying reports whether the relay owns or follows stream now.
func (r *Relay) Relaying(stream string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.relays(stream)
}

func (r *Relay) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Confirmed returns the last seq of stream confirmed in the change feed as of the relay's last
// turn on it, and false if the relay does not own the stream or has not loaded its position yet.
func (r *Relay) Confirmed(stream string) (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.mu.confirmed[stream]
	return v, ok
}

// streamState is the relay's view of one owned stream. Only Run's goroutine touches it.
type streamState struct {
	name   string
	loaded bool   // position read and anchored
	next   uint64 // first seq not confirmed
	saved  uint64 // last position saved in the journal
	lastJS uint64 // JetStream sequence of the confirmed copy of next-1 (0: none known)
	head   uint64 // highest seq known to exist
	high   uint64 // highest seq published in this relay's life
	// run and repairUntil: after an out-of-order store, seqs up to repairUntil are published with
	// message ids of run, and no position is saved until they are all confirmed.
	run         string
	repairUntil uint64
	pending     bool // there may be entries to publish
}

// errNotConnected: NATS is down; the relay waits and retries.
var errNotConnected = errors.New("feeds: nats not connected")

// Run relays until ctx ends, then saves the confirmed positions and returns nil. Only one Run
// may be active at a time. It returns an error only when called twice at once.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.mu.running {
		r.mu.Unlock()
		return errors.New("feeds: relay already running")
	}
	r.mu.running = true
	r.mu.Unlock()
	streams := map[string]*streamState{}
	defer func() {
		r.saveAll(streams)
		r.js.CleanupPublisher() // fails what is still in flight, ends the publisher's listeners
		r.mu.Lock()
		r.mu.running = false
		r.mu.Unlock()
	}()

	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 50 * time.Millisecond
	bo.MaxInterval = r.cfg.RetryMaxInterval
	bo.MaxElapsedTime = 0 // the relay never gives up while it runs: ctx is its deadline
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}

	for {
		actx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
		_, err := EnsureStream(actx, r.js, r.stream)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		r.m.retries.Inc()
		r.logger.Warn("change feed stream not ready; retrying", "stream", r.stream.Name, "err", err)
		if !wait(bo.NextBackOff()) {
			return nil
		}
	}
	bo.Reset()

	poll := time.NewTicker(r.cfg.PollInterval)
	defer poll.Stop()
	for {
		r.syncOwned(ctx, streams)
		var failed error
		more := false
		for _, st := range sorted(streams) {
			if !st.pending {
				continue
			}
			if err := r.turn(ctx, st); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				failed = fmt.Errorf("stream %s: %w", st.name, err)
				if errors.Is(err, errNotConnected) {
					break // every stream would fail alike: back off first
				}
				continue // one stream's trouble does not hold the others back
			}
			more = more || st.pending
		}
		r.publishConfirmed(streams)
		if failed != nil {
			r.m.retries.Inc()
			d := bo.NextBackOff()
			r.logger.Warn("change feed relay failed; retrying", "err", failed, "in", d)
			if !wait(d) {
				return nil
			}
			continue
		}
		bo.Reset()
		if more { // a backlog: go on, but poll (and save positions) on time
			select {
			case <-poll.C:
				r.poll(ctx, streams)
			default:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-poll.C:
			r.poll(ctx, streams)
		}
	}
}

func sorted(streams map[string]*streamState) []*streamState {
	out := make([]*streamState, 0, len(streams))
	for _, st := range streams {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// syncOwned applies Own, Disown and Notify calls to the per-stream state.
func (r *Relay) syncOwned(ctx context.Context, streams map[string]*streamState) {
	r.mu.Lock()
	var gone []*streamState
	for name, st := range streams {
		if !r.relays(name) {
			gone = append(gone, st)
			delete(streams, name)
			delete(r.mu.confirmed, name)
		}
	}
	add := func(name string) {
		if streams[name] == nil {
			streams[name] = &streamState{name: name, pending: true}
		}
	}
	for name := range r.mu.owned {
		add(name)
	}
	for name := range r.mu.followed {
		add(name)
	}
	for name, seq := range r.mu.notified {
		st := streams[name]
		if st == nil { // disowned since
			delete(r.mu.notified, name)
			continue
		}
		st.pending = true
		st.head = max(st.head, seq)
		delete(r.mu.notified, name)
	}
	r.mu.Unlock()
	for _, st := range gone {
		r.save(ctx, st)
	}
	r.m.owned.Set(float64(len(streams)))
}

// poll reads the head of every stream and saves positions.
func (r *Relay) poll(ctx context.Context, streams map[string]*streamState) {
	r.mu.Lock()
	owned := maps.Clone(r.mu.owned)
	r.mu.Unlock()
	for _, st := range streams {
		if !owned[st.name] && st.loaded {
			// A followed stream's head comes with the Notify of each append of this instance
			// (another instance's appends are its own to follow): no read per stream and poll,
			// which with many keys written would be most of the relay's reads.
			r.save(ctx, st)
			continue
		}
		h, err := r.store.Head(ctx, st.name)
		if err != nil {
			r.logger.Warn("reading journal head failed", "stream", st.name, "err", err)
			st.pending = true // the turn will meet the error and back off
			continue
		}
		st.head = max(st.head, h.Seq)
		if !st.loaded || st.head >= st.next {
			st.pending = true
		}
		r.save(ctx, st)
	}
	r.dropIdle(streams)
	r.publishConfirmed(streams)
}

// dropIdle stops following the streams that are idle: no Follow or Notify for FollowIdle, and
// everything up to the known head confirmed and saved. syncOwned then forgets them.
func (r *Relay) dropIdle(streams map[string]*streamState) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, last := range r.mu.followed {
		st := streams[name]
		if st == nil || r.mu.owned[name] || now.Sub(last) < r.cfg.FollowIdle {
			continue
		}
		if st.loaded && st.next > st.head && st.saved == st.next-1 && r.mu.notified[name] < st.next {
			delete(r.mu.followed, name)
			delete(r.mu.notified, name)
		}
	}
}

// publishConfirmed copies the confirmed positions for Confirmed and updates the lag gauge.
func (r *Relay) publishConfirmed(streams map[string]*streamState) {
	lag := map[string]float64{}
	r.mu.Lock()
	for name, st := range streams {
		if !st.loaded {
			continue
		}
		r.mu.confirmed[name] = st.next - 1
		class, _, _ := strings.Cut(name, "/")
		behind := 0.0
		if st.head >= st.next {
			behind = float64(st.head - st.next + 1)
		}
		lag[class] += behind // a class with no lag still shows 0
	}
	r.mu.Unlock()
	r.m.lag.Reset()
	for class, v := range lag {
		r.m.lag.WithLabelValues(class).Set(v)
	}
}

// save records the confirmed position of st in the journal, unless a repair is under way (see
// streamState.run). Errors are logged: the position is saved again later.
func (r *Relay) save(ctx context.Context, st *streamState) {
	if !st.loaded || st.next-1 <= st.saved || st.next <= st.repairUntil {
		return
	}
	if err := r.store.SetPosition(ctx, RelayConsumer, st.name, st.next-1); err != nil {
		if ctx.Err() == nil {
			r.logger.Warn("saving relay position failed", "stream", st.name, "seq", st.next-1, "err", err)
		}
		return
	}
	st.saved = st.next - 1
}

// saveAll saves every position on the way out, with a deadline of its own.
func (r *Relay) saveAll(streams map[string]*streamState) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, st := range streams {
		r.save(ctx, st)
	}
}

// load reads st's position and anchors it: it publishes the entry at the position again under
// its first message id, and JetStream's acknowledgement (a duplicate, normally) tells where the
// confirmed copy lies, which the next entry's copy must follow. Without that entry (trimmed) or
// on a fresh stream, the relay starts with a repair run up to the head, whose message ids no
// earlier relay used.
func (r *Relay) load(ctx context.Context, st *streamState) error {
	pos, _, err := r.store.Position(ctx, RelayConsumer, st.name)
	if err != nil {
		return err
	}
	st.next, st.saved, st.lastJS, st.run, st.repairUntil = pos+1, pos, 0, "", 0
	if pos > 0 {
		es, err := r.store.Read(ctx, st.name, pos, 1)
		switch {
		case err == nil && len(es) == 1:
			msg, err := buildMsg(r.subjects, &es[0], r.site, "", r.nc.MaxPayload())
			if err != nil {
				return fmt.Errorf("seq %d: %w", pos, err)
			}
			ack, err := r.publishOne(ctx, msg)
			if err != nil {
				return fmt.Errorf("anchor at seq %d: %w", pos, err)
			}
			st.lastJS = ack.Sequence
		case err == nil || errors.Is(err, journal.ErrTrimmed):
			h, err := r.store.Head(ctx, st.name)
			if err != nil {
				return err
			}
			st.run, st.repairUntil = newRunID(), h.Seq
		default:
			return err
		}
	}
	st.loaded = true
	r.logger.Debug("relaying stream", "stream", st.name, "from", st.next, "anchor", st.lastJS)
	return nil
}

func (r *Relay) publishOne(ctx context.Context, msg *nats.Msg) (*jetstream.PubAck, error) {
	paf, err := r.js.PublishMsgAsync(msg)
	if err != nil {
		return nil, err
	}
	ack, err := waitAck(ctx, paf)
	if err == nil && ack.Stream != r.stream.Name {
		err = fmt.Errorf("subject %s is stored by JetStream stream %s, not %s", msg.Subject, ack.Stream, r.stream.Name)
	}
	return ack, err
}

func waitAck(ctx context.Context, paf jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-paf.Ok(): // usually there already: then the error channel is never made
		return ack, nil
	default:
	}
	select {
	case ack := <-paf.Ok():
		return ack, nil
	case err := <-paf.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func newRunID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type inFlight struct {
	seq uint64
	paf jetstream.PubAckFuture
}

// prepared is a batch of messages built by prepare, in seq order.
type prepared struct {
	seqs []uint64
	msgs []*nats.Msg
	last bool  // the journal had no more entries when this batch was read
	err  error // reading or building failed after the messages before
}

// prepare reads entries of stream from seq from on and builds their messages (message ids of run
// for seqs up to repairUntil), at most budget of them, sending batches on out, which it closes
// when done. It runs in its own goroutine, owned by turn, so that journal reads and encoding
// overlap with publishing; it stops when ctx ends.
func (r *Relay) prepare(ctx context.Context, stream string, from uint64, run string, repairUntil uint64, budget int, maxPayload int64, out chan<- prepared) {
	defer close(out)
	mb := newMsgBuilder(r.subjects, r.site, maxPayload)
	for budget > 0 {
		es, err := r.store.Read(ctx, stream, from, min(r.cfg.ReadBatch, budget))
		if err != nil {
			err = fmt.Errorf("read from seq %d: %w", from, err)
		}
		p := prepared{last: len(es) < min(r.cfg.ReadBatch, budget) && err == nil, err: err,
			seqs: make([]uint64, 0, len(es)), msgs: make([]*nats.Msg, 0, len(es))}
		mb.expect(len(es))
		for i := range es {
			id := ""
			if es[i].Seq <= repairUntil {
				id = run
			}
			m, err := mb.build(&es[i], id)
			if err != nil {
				p.err = err
				break
			}
			p.seqs, p.msgs = append(p.seqs, es[i].Seq), append(p.msgs, m)
		}
		select {
		case out <- p:
		case <-ctx.Done():
			return
		}
		if p.last || p.err != nil || len(es) == 0 {
			return
		}
		from = es[len(es)-1].Seq + 1
		budget -= len(es)
	}
}

// turn publishes st's entries from its first unconfirmed seq, up to the head or a budget of
// entries, keeping at most MaxInFlight awaiting acknowledgement and confirming them in seq order.
func (r *Relay) turn(ctx context.Context, st *streamState) error {
	if !r.nc.IsConnected() {
		return errNotConnected
	}
	if !st.loaded {
		if err := r.load(ctx, st); err != nil {
			return err
		}
	}
	budget := 16 * max(r.cfg.MaxInFlight, r.cfg.ReadBatch)
	pctx, stop := context.WithCancel(ctx)
	batches := make(chan prepared, 2)
	go r.prepare(pctx, st.name, st.next, st.run, st.repairUntil, budget, r.nc.MaxPayload(), batches)
	defer func() {
		stop()
		for range batches { // wait until prepare has returned
		}
	}()
	var (
		cur      prepared
		pend     []inFlight
		readDone bool
		sendErr  error
	)
	// Refill the window when a quarter of it is free: publications go out in bursts, which the
	// client writes in fewer system calls than one publication per acknowledgement.
	refillAt := r.cfg.MaxInFlight - max(1, r.cfg.MaxInFlight/4)
	for {
		for sendErr == nil && !readDone && len(pend) <= refillAt {
			refillAt = r.cfg.MaxInFlight - 1 // fill up, then wait for a quarter again
			if len(cur.msgs) == 0 {
				if cur.err != nil {
					sendErr = cur.err
					break
				}
				if cur.last {
					readDone = true
					break
				}
				p, ok := <-batches
				if !ok { // budget spent
					break
				}
				cur = p
				continue
			}
			seq, msg := cur.seqs[0], cur.msgs[0]
			paf, err := r.js.PublishMsgAsync(msg)
			if err != nil {
				// Not sent: nothing after it was sent either, so no copy can be out of order.
				r.m.errors.Inc()
				sendErr = fmt.Errorf("publish seq %d: %w", seq, err)
				break
			}
			pend = append(pend, inFlight{seq: seq, paf: paf})
			cur.seqs, cur.msgs = cur.seqs[1:], cur.msgs[1:]
			st.high = max(st.high, seq)
			st.head = max(st.head, seq)
		}
		if len(pend) == 0 {
			break
		}
		refillAt = r.cfg.MaxInFlight - max(1, r.cfg.MaxInFlight/4)
		p := pend[0]
		pend = pend[1:]
		ack, err := waitAck(ctx, p.paf)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && ack.Stream != r.stream.Name {
			err = fmt.Errorf("stored by JetStream stream %s, not %s", ack.Stream, r.stream.Name)
		}
		if err == nil && !inOrder(st.lastJS, ack.Sequence) {
			err = fmt.Errorf("stored at stream sequence %d, before the previous entry's %d", ack.Sequence, st.lastJS)
		}
		if err != nil {
			// Copies after this one may have been stored, and this one after them: publish again
			// from here under new message ids, once what is in flight has settled.
			r.m.errors.Inc()
			for _, q := range pend {
				_, _ = waitAck(ctx, q.paf)
			}
			st.run, st.repairUntil = newRunID(), max(st.repairUntil, st.high)
			return fmt.Errorf("seq %d: %w", p.seq, err)
		}
		st.lastJS = ack.Sequence
		st.next = p.seq + 1
		r.m.published.Inc()
	}
	if sendErr != nil {
		return sendErr
	}
	st.pending = !readDone
	return nil // positions are saved by poll, once per PollInterval: one journal write, not one per batch
}
