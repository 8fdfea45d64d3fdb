package state

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	ops      *prometheus.HistogramVec
	lockOps  *prometheus.CounterVec
	lockWait prometheus.Histogram
	caughtUp prometheus.Counter
	evBatch  prometheus.Histogram
	evAppend prometheus.Histogram
	evRows   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "music_state_operation_duration_seconds",
			Help:    "Duration of keyed state operations, by operation, consistency and result.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}, []string{"op", "consistency", "result"}),
		lockOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_state_lock_operations_total",
			Help: "Lock operations on row keys, by operation.",
		}, []string{"op"}),
		lockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "music_state_lock_wait_seconds",
			Help:    "Time from an acquire request to the grant.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		caughtUp: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_state_catch_up_entries_total",
			Help: "Journal entries re-applied to tables when a key's state was brought up to date.",
		}),
		evBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "music_state_eventual_batch_entries",
			Help:    "Eventual writes journaled per append (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		evAppend: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "music_state_eventual_append_seconds",
			Help:    "Duration of one eventual-log append (group commit), retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		evRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_state_eventual_rows_in_append_total",
			Help: "Eventual writes whose row was written in the same batch as their journal entry (distributed mode); the others were applied after the append.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.ops, m.lockOps, m.lockWait, m.caughtUp, m.evBatch, m.evAppend, m.evRows} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// observe records one operation; result is the error's class.
func (m *metrics) observe(op string, c Consistency, start time.Time, err error) {
	m.ops.WithLabelValues(op, c.String(), resultOf(err)).Observe(time.Since(start).Seconds())
}

func resultOf(err error) string {
	for _, e := range []struct {
		err  error
		name string
	}{
		{ErrInvalid, "invalid"}, {ErrNotFound, "not_found"}, {ErrExists, "exists"}, {ErrNotHolder, "not_holder"},
		{ErrConditionFailed, "condition_failed"}, {ErrLocked, "locked"}, {ErrUnavailable, "unavailable"},
	} {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	if err != nil {
		return "error"
	}
	return "ok"
}
