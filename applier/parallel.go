package applier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/musicd/musicd/journal"
)

// This file applies consecutive transactions of one stream at once, where that is safe: each of
// them only inserts rows, each row once, none of them a row another one of the group inserts.
// Such transactions touch disjoint rows and clocks, and a plain INSERT takes no gap lock, so
// they do not wait for one another in the target. They are applied as fresh inserts
// (applyFresh), each on a connection of its own (up to Config.Parallel at once), and committed in
// the stream's order: each waits for the one before it to commit before it writes its position
// and commits, so that the target's position always names a prefix of the stream and a crash
// anywhere loses or doubles nothing (TestParallelGroupsAcrossCrash). If one fails, those after it
// roll back, and the stream goes on one transaction at a time from the first that did not commit,
// which handles the failure as usual (a row or clock found there, a refused row, a lost
// connection).

// maxParallelTxEntries bounds the entries of a transaction applied in a parallel group.
const maxParallelTxEntries = 4 * maxRunRows

// errParallelAborted: a transaction of a parallel group rolled back because one before it failed.
var errParallelAborted = errors.New("applier: an earlier transaction of the parallel group failed")

// parallelTxs returns the transactions at the start of es that may be applied as one parallel
// group: complete within es, consecutive, each only inserts (snapshot rows included, which are
// applied as inserts) of rows that no other transaction of the group touches, each row once. It
// stops at the first transaction that is not such. With fewer than need transactions ending in
// es it returns nil at once, without looking at their rows.
func (w *worker) parallelTxs(es []journal.Entry, need int) [][]*journal.Entry {
	if w.a.cfg.Parallel < 2 || w.local || w.replay || w.slowTx || w.prefetchTxs > 0 || w.serialTx ||
		len(es) == 0 || es[0].Tx.Index != 0 {
		return nil
	}
	ends := 0
	for i := 0; i < len(es) && ends < need; i++ {
		if es[i].Tx.Last {
			ends++
		}
	}
	if ends < need {
		return nil
	}
	var txs [][]*journal.Entry
	seen := map[string]bool{} // table and key hash of every row of the group
	for start := 0; start < len(es); {
		var t []*journal.Entry
		var keys []string
		complete := false
		for i := start; i < len(es) && len(t) < maxParallelTxEntries; i++ {
			e := &es[i]
			if (e.Op != journal.OpInsert && e.Op != journal.OpRead) || e.Tx.Index != uint32(len(t)) {
				break
			}
			if e.Op == journal.OpRead {
				e.Op = journal.OpInsert // as the serial path applies it
			}
			if !w.batchable(e) {
				break
			}
			k := e.Database + "\x00" + e.Table + "\x00" + string(keyHash(targetKey(e)))
			if seen[k] {
				break
			}
			seen[k] = true
			keys = append(keys, k)
			t = append(t, e)
			if e.Tx.Last {
				complete = true
				break
			}
		}
		if !complete {
			for _, k := range keys { // not in the group: its rows do not count
				delete(seen, k)
			}
			break
		}
		txs = append(txs, t)
		start += len(t)
	}
	return txs
}

// parallelTx is a transaction of a parallel group, as it goes.
type parallelTx struct {
	done chan struct{} // closed once it committed or gave up
	err  error         // why it did not commit; set before done is closed
}

// applyParallel applies a group (parallelTxs) and returns how many of its transactions committed,
// a prefix of them, and, if not all did, why the first that did not failed.
func (w *worker) applyParallel(ctx context.Context, txs [][]*journal.Entry) (int, error) {
	k := w.a.cfg.Parallel
	for len(w.par) < k {
		w.par = append(w.par, nil)
	}
	free := make(chan int, k) // connection slots not in use
	for i := range k {
		free <- i
	}
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
		prev   *parallelTx
		outs   []*parallelTx
		err    error
	)
	for _, t := range txs {
		slot := <-free // a slot comes back once its transaction committed or gave up
		if failed.Load() || ctx.Err() != nil {
			break
		}
		if w.par[slot] == nil {
			if w.par[slot], err = w.connectParallel(ctx); err != nil {
				break
			}
		}
		p := &parallelTx{done: make(chan struct{})}
		outs = append(outs, p)
		wg.Add(1)
		go func(c *target, before *parallelTx) {
			defer wg.Done()
			p.err = w.applyInOrder(ctx, c, t, before)
			if p.err != nil {
				failed.Store(true)
			}
			close(p.done)
			free <- slot
		}(w.par[slot], prev)
		prev = p
	}
	wg.Wait()
	n := 0
	for _, p := range outs {
		if p.err != nil {
			err = p.err
			break
		}
		n++
	}
	if err == nil && n < len(txs) {
		err = ctx.Err() // stopped before the end
	}
	if err != nil {
		// A failed COMMIT leaves its outcome unknown: the worker reads its position again.
		w.closeParallel()
	}
	w.a.metrics.parallel.WithLabelValues(w.site).Add(float64(n))
	return n, err
}

// applyInOrder applies transaction t on c, waits for the transaction before it (nil: none) to
// commit, then records the position and commits. If the one before did not commit, or ctx ended,
// it rolls back.
func (w *worker) applyInOrder(ctx context.Context, c *target, t []*journal.Entry, before *parallelTx) (err error) {
	if _, err := c.exec("BEGIN"); err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			_, _ = c.exec("ROLLBACK") // a connection that fails here is closed with the group
		}
	}()
	for run := t; len(run) > 0; {
		n := min(len(run), maxRunRows)
		if err := w.applyFresh(c, run[:n]); err != nil {
			return entryErr(run[0], err)
		}
		run = run[n:]
	}
	if w.a.testHook != nil {
		w.a.hookMu.Lock()
		for _, e := range t {
			w.a.testHook(w.stream, e.Seq)
		}
		w.a.hookMu.Unlock()
	}
	if before != nil {
		<-before.done
		if before.err != nil {
			return errParallelAborted
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.setPosition(t[len(t)-1]); err != nil {
		return err
	}
	if _, err := c.exec("COMMIT"); err != nil {
		return err
	}
	committed = true
	return nil
}

// parallelLockWait bounds, in seconds, how long a statement of a parallel group waits for a row
// lock. The group's transactions touch disjoint rows, but a target's own constraints or triggers
// could make an earlier one wait for a lock a later one holds while the later one waits for the
// earlier one to commit, which InnoDB cannot see as a deadlock: the wait ends after this long
// (a lock wait timeout, retried one transaction at a time) instead of innodb_lock_wait_timeout
// (50 s by default).
const parallelLockWait = 2

// connectParallel opens a connection for parallel groups.
func (w *worker) connectParallel(ctx context.Context) (*target, error) {
	c, err := connect(ctx, &w.a.cfg)
	if err != nil {
		return nil, err
	}
	if _, err := c.exec(fmt.Sprintf("SET SESSION innodb_lock_wait_timeout = %d", parallelLockWait)); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// closeParallel closes the connections of parallel groups.
func (w *worker) closeParallel() {
	for i, c := range w.par {
		c.close()
		w.par[i] = nil
	}
}
