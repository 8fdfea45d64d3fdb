package ownership

import (
	"fmt"
	"time"

	"github.com/musicd/musicd/policies"
)

// Settings is the `ownership` section of musicd's configuration: the policy (see
// policies.Ownership) and what this instance runs when it gains or loses a partition.
type Settings struct {
	Sites         []string      `yaml:"sites" help:"every site of the deployment (comma-separated; default: this site alone)"`
	FailoverGrace time.Duration `yaml:"failover_grace" help:"how long none of a site's instances must be alive in ZooKeeper before its partitions move"`
	// Partitions are the partition sets (config file only).
	Partitions []policies.PartitionSet `yaml:"partitions"`
	// Moves pin partitions to sites (config file only; the REST API changes them at run time).
	Moves   map[string]string `yaml:"moves"`
	Drained []string          `yaml:"drained" help:"sites that own no partition (comma-separated; the REST API changes them at run time)"`
	Address string            `yaml:"address" help:"address a non-owner's 409 names for this instance (default: the API listener's address)"`
	Hooks   HooksConfig       `yaml:"hooks"`
}

// DefaultSettings: no partitions (ownership off), a 10 s grace, hooks with their defaults.
func DefaultSettings() Settings {
	return Settings{FailoverGrace: 10 * time.Second, Hooks: HooksConfig{}.WithDefaults()}
}

// Enabled reports whether any partition set is configured.
func (s Settings) Enabled() bool { return len(s.Partitions) > 0 }

// Policy is the ownership policy of the settings, with site as the only site when none is listed.
func (s Settings) Policy(site string) policies.Ownership {
	sites := s.Sites
	if len(sites) == 0 {
		sites = []string{site}
	}
	return policies.Ownership{Sites: sites, FailoverGrace: s.FailoverGrace, Partitions: s.Partitions,
		Moves: s.Moves, Drained: s.Drained}.WithDefaults()
}

// Validate reports the first problem by its YAML path below `ownership.`; site is this site.
func (s Settings) Validate(site string) error {
	if err := s.Hooks.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("hooks.%w", err)
	}
	if !s.Enabled() {
		return nil
	}
	p := s.Policy(site)
	if err := p.Validate(); err != nil {
		return err
	}
	for _, x := range p.Sites {
		if x == site {
			return nil
		}
	}
	return fmt.Errorf("sites: this site %q is not listed", site)
}
