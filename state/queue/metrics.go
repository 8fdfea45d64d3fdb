package queue

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/state"
)

type metrics struct {
	ops     *prometheus.CounterVec
	latency prometheus.Histogram
	lost    prometheus.Counter
	batch   prometheus.Histogram
	expired prometheus.Counter
	dead    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_queue_operations_total",
			Help: "Queue operations (enqueue, claim, complete, release, extend, retry) by result (ok, empty for a claim that found nothing, or the error class).",
		}, []string{"op", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "music_queue_claim_delay_seconds",
			Help:    "Time from a job being due (enqueued, or its delay over) to its claim.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_queue_claim_races_lost_total",
			Help: "Claims of a candidate job that another worker claimed first (the claim tried the next candidate).",
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "music_queue_claims_per_write",
			Help:    "Jobs claimed by one conditional write (a claim and the claims of this daemon that waited for it).",
			Buckets: []float64{1, 2, 3, 4, 6, 8, 12, 16, 32},
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_queue_leases_expired_total",
			Help: "Claimed jobs whose lease ran out and that the reaper returned to the queue or dead-lettered.",
		}),
		dead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_queue_dead_letters_total",
			Help: "Jobs moved to the dead letters after their last allowed failed attempt.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.ops, m.latency, m.lost, m.batch, m.expired, m.dead} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(op string, err error) {
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, state.ErrInvalid):
		result = "invalid"
	case errors.Is(err, state.ErrNotFound):
		result = "not_found"
	case errors.Is(err, ErrLeaseExpired):
		result = "lease_expired"
	case errors.Is(err, state.ErrNotHolder):
		result = "not_claimant"
	case errors.Is(err, state.ErrUnavailable):
		result = "unavailable"
	default:
		result = "error"
	}
	m.ops.WithLabelValues(op, result).Inc()
}
