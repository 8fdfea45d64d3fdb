package applier

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/musicd/musicd/internal/hostport"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// Config configures the applier of one target database.
type Config struct {
	// Site is this site's id: the origin of rows written natively here (no row clock).
	Site string `yaml:"site"`
	// Addr is host:port of the target MariaDB; User and Password an account that may write the
	// mirrored tables, create MetaDatabase and set skip_replication (SUPER or BINLOG ADMIN).
	Addr     string `yaml:"addr"`
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// Timeout bounds connecting and each statement. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// MetaDatabase holds the applier's tables in the target (positions, row_clock,
	// dead_letters). Default "musicd_applier".
	MetaDatabase string `yaml:"meta_database"`
	// Streams are the journal streams of other sites that this applier replays into the target,
	// e.g. "binlog/a/orders". One goroutine each, in seq order.
	Streams []string `yaml:"streams"`
	// LocalStreams are the capture streams of the target database itself at this site. They are
	// not applied: the applier stamps the row clock of each row written natively here, so that
	// last-writer-wins knows the local write's timestamp. Optional; without them a native row
	// counts as older than any remote write in a conflict.
	LocalStreams []string `yaml:"local_streams"`
	// Tables selects what is applied (first matching rule; off or no match: the entry is passed
	// over, on purpose) and how conflicts on each table's rows are resolved (the rule's
	// conflicts: lww, the default, priority or dead_letter). The mode (sync/async) matters to
	// the source's capture, not here.
	Tables policies.Tables `yaml:"tables"`
	// SitePriority orders sites for the tables that resolve conflicts by priority, highest first.
	SitePriority []string `yaml:"site_priority"`
	// DDL is what a ddl entry does: "apply" (default) runs the statement on the target; "stop"
	// stops the stream with an error naming the entry.
	DDL string `yaml:"ddl"`
	// OnError is what a row the target refuses (constraint, type, missing table or column, no
	// primary key) does: "stop" (default) stops its stream with an error naming stream, seq and
	// GTID; "dead_letter" writes the entry to the dead-letter table and goes on.
	OnError string `yaml:"on_error"`
	// BatchEntries is how many entries one journal read returns (and bounds a parallel group).
	// Default 1000.
	BatchEntries int `yaml:"batch_entries"`
	// Parallel is how many transactions of one stream may be applied at once, each on a
	// connection of its own: consecutive transactions that only insert rows, none of them a row
	// another touches, committed in the stream's order. 1: one at a time. Default 4.
	Parallel int `yaml:"parallel"`
	// PollMin and PollMax bound the polling fallback: an idle stream is read again after PollMin,
	// doubling up to PollMax; a Notify reads it at once. Defaults 100ms and 5s.
	PollMin time.Duration `yaml:"poll_min"`
	PollMax time.Duration `yaml:"poll_max"`
	// RetryMax caps the backoff between retries of transient errors (target or journal
	// unavailable, deadlock). Default 30s. Retries go on while Run runs; each is counted.
	RetryMax time.Duration `yaml:"retry_max"`
	// LocalWait bounds how long a conflict against an unclocked row waits for LocalStreams to be
	// stamped up to their heads. Default 5s.
	LocalWait time.Duration `yaml:"local_wait"`
	// OnConflict, if set, receives every conflict after its transaction committed (the lead
	// wires it to the conflicts subject). It must not block for long.
	OnConflict func(Conflict) `yaml:"-"`
}

// Policies for Config.DDL and Config.OnError.
const (
	DDLApply       = "apply"
	DDLStop        = "stop"
	OnErrorStop    = "stop"
	OnErrorDeadLtr = "dead_letter"
)

var (
	siteRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	metaRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
)

// WithDefaults fills the fields left empty.
func (c Config) WithDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.MetaDatabase == "" {
		c.MetaDatabase = "musicd_applier"
	}
	if c.DDL == "" {
		c.DDL = DDLApply
	}
	if c.OnError == "" {
		c.OnError = OnErrorStop
	}
	if c.BatchEntries == 0 {
		c.BatchEntries = 1000
	}
	if c.Parallel == 0 {
		c.Parallel = 4
	}
	if c.PollMin == 0 {
		c.PollMin = 100 * time.Millisecond
	}
	if c.PollMax == 0 {
		c.PollMax = 5 * time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.LocalWait == 0 {
		c.LocalWait = 5 * time.Second
	}
	return c
}

// Validate reports the first invalid field, named by its YAML key.
func (c Config) Validate() error {
	if !siteRe.MatchString(c.Site) {
		return fmt.Errorf("site: %q must be 1-64 of a-z, 0-9, _ and -", c.Site)
	}
	if err := hostport.Validate(c.Addr, false, false); err != nil {
		return fmt.Errorf("addr: %w", err)
	}
	if c.User == "" {
		return errors.New("user: required")
	}
	if c.Timeout <= 0 {
		return errors.New("timeout: must be a positive duration")
	}
	if !metaRe.MatchString(c.MetaDatabase) {
		return fmt.Errorf("meta_database: %q must be 1-64 of A-Z, a-z, 0-9 and _", c.MetaDatabase)
	}
	if len(c.Streams) == 0 {
		return errors.New("streams: at least one stream to apply")
	}
	seen := map[string]bool{}
	for i, s := range append(append([]string{}, c.Streams...), c.LocalStreams...) {
		if err := journal.ValidateStreamID(s); err != nil {
			return fmt.Errorf("streams[%d]: %w", i, err)
		}
		if seen[s] {
			return fmt.Errorf("streams: %q listed twice", s)
		}
		seen[s] = true
	}
	if err := c.Tables.Validate(); err != nil {
		return fmt.Errorf("tables%w", err)
	}
	if c.Tables.HasResolution(ResolvePriority) && len(c.SitePriority) == 0 {
		return errors.New("site_priority: required, a tables rule resolves conflicts by priority")
	}
	for i, s := range c.SitePriority {
		if !siteRe.MatchString(s) {
			return fmt.Errorf("site_priority[%d]: %q is not a site id", i, s)
		}
	}
	if c.DDL != DDLApply && c.DDL != DDLStop {
		return fmt.Errorf("ddl: %q is not apply or stop", c.DDL)
	}
	if c.OnError != OnErrorStop && c.OnError != OnErrorDeadLtr {
		return fmt.Errorf("on_error: %q is not stop or dead_letter", c.OnError)
	}
	if c.BatchEntries < 1 || c.BatchEntries > journal.MaxReadEntries {
		return fmt.Errorf("batch_entries: %d out of 1..%d", c.BatchEntries, journal.MaxReadEntries)
	}
	if c.Parallel < 1 || c.Parallel > 64 {
		return fmt.Errorf("parallel: %d out of 1..64", c.Parallel)
	}
	if c.PollMin <= 0 || c.PollMax < c.PollMin || c.RetryMax <= 0 || c.LocalWait <= 0 {
		return errors.New("poll_min, poll_max, retry_max, local_wait: positive durations, poll_min <= poll_max")
	}
	return nil
}

// ruleFor returns the conflict rule of database.table.
func (c *Config) ruleFor(database, table string) Rule {
	return Rule{Resolve: c.Tables.ResolutionOf(database, table), Priority: c.SitePriority, LocalSite: c.Site}
}

// siteOf is the metrics label of a stream: the site of "binlog/<site>/<source>", or the class.
func siteOf(stream string) string {
	parts := strings.SplitN(stream, "/", 3)
	if len(parts) == 3 && parts[0] == "binlog" {
		return parts[1]
	}
	return parts[0]
}
