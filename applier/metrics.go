package applier

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the applier's Prometheus metrics. Labels have few values: source site, table,
// resolution.
type metrics struct {
	lagEntries *prometheus.GaugeVec
	lagSeconds *prometheus.GaugeVec
	applied    *prometheus.CounterVec
	parallel   *prometheus.CounterVec
	conflicts  *prometheus.CounterVec
	errors     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lagEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_applier_lag_entries",
			Help: "Journal entries of a source site's streams not yet applied to the target (as of the last head read).",
		}, []string{"source_site"}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_applier_lag_seconds",
			Help: "Now minus the HLC time of the last entry applied from a source site; 0 when caught up.",
		}, []string{"source_site"}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_applier_applied_transactions_total",
			Help: "Source transactions applied to the target (each as one target transaction).",
		}, []string{"source_site"}),
		parallel: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_applier_parallel_transactions_total",
			Help: "Source transactions applied in parallel groups (insert-only, committed in order; also counted in music_applier_applied_transactions_total).",
		}, []string{"source_site"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_applier_conflicts_total",
			Help: "Conflicts met while applying, by table and resolution (incoming_wins, target_kept, dead_letter).",
		}, []string{"table", "resolution"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_applier_errors_total",
			Help: "Errors while applying: transient ones (retried with backoff), rows dead-lettered, and streams stopped.",
		}, []string{"source_site"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.lagEntries, m.lagSeconds, m.applied, m.parallel, m.conflicts, m.errors} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("applier: metrics already registered (one applier per registry; a registry per target)")
			}
			return nil, err
		}
	}
	return m, nil
}
