package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "musicd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	cfg, warnings, err := loadConfig(nil, nil)
	if err != nil {
		t.Fatalf("no configuration: %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings with no configuration: %v", warnings)
	}
	if cfg.Mode != modeEmbedded || cfg.Site != "local" || cfg.API.Listen != "127.0.0.1:8080" {
		t.Errorf("defaults: mode %q site %q listen %q", cfg.Mode, cfg.Site, cfg.API.Listen)
	}
}

// Flags win over the environment, which wins over the file, which wins over the defaults.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, `
api:
  listen: 127.0.0.1:1001
  read_timeout: 11s
  write_timeout: 12s
log:
  level: warn
`)
	env := []string{
		"MUSIC_CONFIG=" + file,
		"MUSIC_API_LISTEN=127.0.0.1:1002",
		"MUSIC_API_READ_TIMEOUT=21s",
		"MUSIC_NATS_EMBEDDED_LISTEN=",
		"PATH=/usr/bin",
	}
	cfg, _, err := loadConfig([]string{"--api.listen", "127.0.0.1:1003", "--log.format=json"}, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"api.listen (flag)", cfg.API.Listen, "127.0.0.1:1003"},
		{"api.read_timeout (env)", cfg.API.ReadTimeout.String(), "21s"},
		{"api.write_timeout (file)", cfg.API.WriteTimeout.String(), "12s"},
		{"api.idle_timeout (default)", cfg.API.IdleTimeout.String(), "2m0s"},
		{"log.level (file)", cfg.Log.Level, "warn"},
		{"log.format (flag)", cfg.Log.Format, "json"},
		{"nats.embedded.listen (env, empty)", cfg.NATS.Embedded.Listen, ""},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
}

func TestListsFromEnvAndFlags(t *testing.T) {
	cfg, _, err := loadConfig(
		[]string{"--mode=distributed", "--site=irvine", "--zookeeper.servers", "z1:2181, z2:2181"},
		[]string{"MUSIC_CASSANDRA_CONTACT_POINTS=c1,c2:9043", "MUSIC_NATS_URLS=nats://n1:4222"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"c1", "c2:9043"}; !reflect.DeepEqual(cfg.Cassandra.ContactPoints, want) {
		t.Errorf("contact points %q, want %q", cfg.Cassandra.ContactPoints, want)
	}
	if want := []string{"z1:2181", "z2:2181"}; !reflect.DeepEqual(cfg.ZooKeeper.Servers, want) {
		t.Errorf("zookeeper servers %q, want %q", cfg.ZooKeeper.Servers, want)
	}
}

func TestExampleConfigsAreValid(t *testing.T) {
	for _, name := range []string{"musicd.example.yaml", "musicd.embedded.yaml"} {
		cfg, _, err := loadConfig([]string{"--config", filepath.Join("..", "..", "deploy", name)}, nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if name == "musicd.example.yaml" && (cfg.Mode != modeDistributed || len(cfg.Sources) != 1 || cfg.Sources[0].ServerID != 1001) {
			t.Errorf("%s decoded as mode %q with sources %+v", name, cfg.Mode, cfg.Sources)
		}
	}
}

// Every bad input is refused with one line that names the field.
func TestInvalidConfiguration(t *testing.T) {
	distributed := []string{"--mode=distributed", "--site=a", "--cassandra.contact-points=c:9042",
		"--zookeeper.servers=z:2181", "--nats.urls=nats://n:4222"}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		file string
		want string
	}{
		{name: "port out of range", args: []string{"--api.listen", "127.0.0.1:99999"}, want: `api.listen: "127.0.0.1:99999": port 99999 out of range`},
		{name: "port not a number", env: []string{"MUSIC_API_LISTEN=127.0.0.1:http"}, want: "api.listen:"},
		{name: "unknown file key", file: "api:\n  listen: 127.0.0.1:1\n  lisen: x\n", want: `line 3: unknown field "api.lisen"`},
		{name: "unknown top key", file: "colour: blue\n", want: `line 1: unknown field "colour"`},
		{name: "unknown source key", file: "sources:\n  - name: a\n    adr: x\n", want: `unknown field "sources[0].adr"`},
		{name: "wrong type in file", file: "api:\n  read_timeout: soon\n", want: "line 2: api.read_timeout: cannot unmarshal"},
		{name: "bad yaml", file: "api: [\n", want: "config file"},
		{name: "missing file", args: []string{"--config", "/nonexistent/musicd.yaml"}, want: "config file: open /nonexistent/musicd.yaml"},
		{name: "bad duration env", env: []string{"MUSIC_SHUTDOWN_TIMEOUT=soon"}, want: "shutdown_timeout (MUSIC_SHUTDOWN_TIMEOUT)"},
		{name: "bad duration flag", args: []string{"--api.read-timeout=soon"}, want: "api.read_timeout (--api.read-timeout)"},
		{name: "negative duration", args: []string{"--api.idle-timeout=-1s"}, want: "api.idle_timeout: must be a positive duration"},
		{name: "unknown flag", args: []string{"--api.lisen=x"}, want: "flag provided but not defined: -api.lisen"},
		{name: "stray argument", args: []string{"serve"}, want: `unexpected argument "serve"`},
		{name: "bad mode", args: []string{"--mode=cluster"}, want: `mode: "cluster" is not embedded or distributed`},
		{name: "bad log format", args: []string{"--log.format=xml"}, want: "log.format"},
		{name: "bad log level", args: []string{"--log.level=loud"}, want: "log.level"},
		{name: "bad site", args: []string{"--site=Irvine!"}, want: "site:"},
		{name: "cassandra in embedded mode", args: []string{"--cassandra.contact-points=c"}, want: "cassandra.contact_points: set, but mode is embedded"},
		{name: "distributed without site", args: []string{"--mode=distributed"}, want: "site: required in distributed mode"},
		{name: "distributed without cassandra", args: []string{"--mode=distributed", "--site=a"}, want: "cassandra.contact_points: at least one"},
		{name: "bad zookeeper server", args: append(distributed, "--zookeeper.servers=z:0"), want: "zookeeper.servers[0]:"},
		{name: "bad zookeeper root", args: append(distributed, "--zookeeper.root=music"), want: "zookeeper.root:"},
		{name: "bad nats url", args: append(distributed, "--nats.urls=http://n:4222"), want: "nats.urls[0]:"},
		{name: "bad protocol", args: append(distributed, "--cassandra.protocol-version=2"), want: "cassandra.protocol_version:"},
		{name: "bad keyspace", args: append(distributed, "--cassandra.keyspace=music;drop"), want: "cassandra.keyspace:"},
		{name: "embedded store too small", args: []string{"--nats.embedded.max-store-bytes=10"}, want: "nats.embedded.max_store_bytes:"},
		{name: "int overflow", args: []string{"--cassandra.protocol-version=99999999999999999999"}, want: "cassandra.protocol_version (--cassandra.protocol-version)"},
		{name: "bad replication strategy", args: append(distributed, "--cassandra.replication.strategy=ring"), want: "cassandra.replication.strategy:"},
		{name: "topology without data centers", args: append(distributed, "--cassandra.replication.strategy=network_topology"), want: "cassandra.replication.data_centers:"},
		{name: "bad consistency", args: append(distributed, "--cassandra.consistency.write=SERIAL"), want: "cassandra.consistency.write:"},
		{name: "bad class consistency", file: "cassandra:\n  stream_classes:\n    binlog: {serial: QUORUM}\n", args: distributed, want: "cassandra.stream_classes.binlog.serial:"},
		{name: "unknown key in a map entry", file: "cassandra:\n  stream_classes:\n    binlog: {wrte: QUORUM}\n", want: `unknown field "cassandra.stream_classes.binlog.wrte"`},
		{name: "source without server id", file: "sources:\n  - {name: a, addr: '127.0.0.1:3306', user: u}\n", want: "sources[0].server_id: required"},
		{name: "duplicate source", file: "sources:\n  - {name: a, addr: '127.0.0.1:3306', user: u, server_id: 9}\n  - {name: a, addr: '127.0.0.1:3307', user: u, server_id: 9}\n", want: `sources[1].name: "a" is used twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config", writeFile(t, tc.file)}, args...)
			}
			_, _, err := loadConfig(args, tc.env)
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tc.want)
			}
			if msg := oneLine(err.Error()); !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
		})
	}
}

func TestUnknownEnvironmentIsWarned(t *testing.T) {
	_, warnings, err := loadConfig(nil, []string{"MUSIC_API_LISEN=x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "MUSIC_API_LISEN") {
		t.Errorf("warnings %q, want one naming MUSIC_API_LISEN", warnings)
	}
}

// Every scalar option can be set from a flag, has help text, and appears in --help.
func TestEveryOptionIsSettableAndDocumented(t *testing.T) {
	var help strings.Builder
	printUsage(&help)
	for _, o := range options() {
		if o.help == "" {
			t.Errorf("%s has no help tag", o.path)
		}
		if !strings.Contains(help.String(), "--"+o.flag+" ") || !strings.Contains(help.String(), o.env) {
			t.Errorf("--help does not document --%s / %s", o.flag, o.env)
		}
		sample := map[string]string{"duration": "7s", "list": "x,y", "bool": "true", "string": "s", "int": "7"}[o.typeName()]
		cfg := DefaultConfig()
		if err := o.set(&cfg, sample); err != nil {
			t.Errorf("%s: setting %q: %v", o.path, sample, err)
		}
		if got := o.valueString(&cfg); got != sample && !(o.typeName() == "duration" && got == "7s") {
			t.Errorf("%s: set %q, read back %q", o.path, sample, got)
		}
	}
	if len(options()) < 20 {
		t.Errorf("only %d options found; the reflection walk lost some", len(options()))
	}
}

func TestHelpAndVersion(t *testing.T) {
	if _, _, err := loadConfig([]string{"--help"}, nil); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if _, _, err := loadConfig([]string{"--version"}, nil); !errors.Is(err, errVersion) {
		t.Errorf("--version: %v", err)
	}
}

func TestDurationsKeepUnits(t *testing.T) {
	cfg, _, err := loadConfig([]string{"--config", writeFile(t, "startup_timeout: 1m30s\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StartupTimeout != 90*time.Second {
		t.Errorf("startup_timeout %s, want 1m30s", cfg.StartupTimeout)
	}
}
