package feeds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/musicd/musicd/internal/testenv"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// roundTrip publishes n messages to a fresh JetStream stream and reads them back in order with a
// durable consumer: the operations the change-feed relay and its subscribers will do.
func roundTrip(t *testing.T, c *Conn, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	name := strings.ToUpper(testenv.UniqueName("TEST_"))
	subject := "musicd.test." + strings.ToLower(name)
	s, err := c.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject + ".>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.js.DeleteStream(context.Background(), name); err != nil {
			t.Errorf("delete stream %s: %v", name, err)
		}
	}()
	for i := 1; i <= n; i++ {
		// The message id makes a repeated publish a no-op (JetStream de-duplication).
		for range 2 {
			if _, err := c.js.Publish(ctx, subject+".x", []byte(fmt.Sprint(i)), jetstream.WithMsgID(fmt.Sprint("m", i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(n) {
		t.Errorf("stream holds %d messages, want %d (duplicates not removed?)", info.State.Msgs, n)
	}
	cons, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "reader", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := 1
	for m := range batch.Messages() {
		if string(m.Data()) != fmt.Sprint(want) {
			t.Errorf("message %d carries %q", want, m.Data())
		}
		if err := m.Ack(); err != nil {
			t.Error(err)
		}
		want++
	}
	if want-1 != n {
		t.Errorf("read %d messages, want %d (%v)", want-1, n, batch.Error())
	}
}

// The harness test against the real nats-server started by deploy/dev.
func TestExternalNATSJetStream(t *testing.T) {
	cfg := DefaultConfig()
	cfg.URLs = []string{testenv.NATS(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg, nil, "musicd-test", discard())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, 50)
}

// The embedded server, both listening on a port and in-process only.
func TestEmbeddedNATS(t *testing.T) {
	for _, listen := range []string{"127.0.0.1:0", ""} {
		t.Run(fmt.Sprintf("listen=%q", listen), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Embedded.Listen = listen
			srv, err := StartEmbedded(cfg.Embedded, filepath.Join(t.TempDir(), "nats"), "test", discard(), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Shutdown()
			if (srv.ClientURL() == "") != (listen == "") {
				t.Errorf("ClientURL %q with listen %q", srv.ClientURL(), listen)
			}
			c, err := Connect(context.Background(), cfg, srv, "musicd-test", discard())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			roundTrip(t, c, 20)
		})
	}
}

// A port that is taken is reported, not ignored.
func TestEmbeddedPortTaken(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Embedded.Listen = "127.0.0.1:0"
	first, err := StartEmbedded(cfg.Embedded, filepath.Join(t.TempDir(), "a"), "a", discard(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Shutdown()
	cfg.Embedded.Listen = strings.TrimPrefix(first.ClientURL(), "nats://")
	second, err := StartEmbedded(cfg.Embedded, filepath.Join(t.TempDir(), "b"), "b", discard(), 2*time.Second)
	if err == nil {
		second.Shutdown()
		t.Fatal("second server started on a taken port")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) {}, ""},
		{func(c *Config) { c.URLs = []string{"nats://user:pw@n1:4222", "tls://n2:4222"} }, ""},
		{func(c *Config) { c.URLs = []string{"n1:4222"} }, "urls[0]:"},
		{func(c *Config) { c.URLs = []string{"nats://n1"} }, "urls[0]:"},
		{func(c *Config) { c.Embedded.Listen = "127.0.0.1:70000" }, "embedded.listen:"},
		{func(c *Config) { c.Embedded.Listen = "" }, ""},
		{func(c *Config) { c.ConnectTimeout = 0 }, "connect_timeout:"},
		{func(c *Config) {
			c.URLs = []string{"tls://n1:4222"}
			c.User, c.Password = "u", "p"
			c.TLS.CAFile = "ca.pem"
		}, ""},
		{func(c *Config) { c.URLs = []string{"nats://n1:4222"}; c.CredentialsFile = "x.creds" }, ""},
		{func(c *Config) { c.URLs = []string{"nats://n1:4222"}; c.Token, c.User = "t", "u" }, "credentials_file, user, token:"},
		{func(c *Config) { c.URLs = []string{"nats://n1:4222"}; c.Password = "p" }, "password:"},
		{func(c *Config) { c.URLs = []string{"nats://n1:4222"}; c.TLS.CertFile = "c.pem" }, "tls.cert_file, tls.key_file:"},
		{func(c *Config) { c.Token = "t" }, "credentials_file, user, token:"},
		{func(c *Config) { c.TLS.CAFile = "ca.pem" }, "tls:"},
		{func(c *Config) { c.Stream.Name = "A.B" }, "stream.name:"},
		{func(c *Config) { c.Stream.SubjectPrefix = "music.>" }, "stream.subject_prefix:"},
		{func(c *Config) { c.Stream.SubjectPrefix = "acme.music" }, ""},
		{func(c *Config) { c.Stream.Replicas = 3 }, "stream.replicas:"},
		{func(c *Config) { c.URLs = []string{"nats://n1:4222"}; c.Stream.Replicas = 3 }, ""},
		{func(c *Config) { c.Stream.MaxBytes = 2 << 30 }, "stream.max_bytes:"},
		{func(c *Config) { c.Stream.DuplicateWindow = 8 * 24 * time.Hour }, "stream.duplicate_window:"},
		{func(c *Config) { c.Relay.MaxInFlight = 0 }, "relay.max_in_flight:"},
		{func(c *Config) { c.Relay.ReadBatch = 20000 }, "relay.read_batch:"},
		{func(c *Config) { c.Relay.AckTimeout = 0 }, "relay.ack_timeout:"},
		{func(c *Config) { c.Relay.PollInterval = 0 }, "relay.poll_interval:"},
	} {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want prefix %q", c, err, tc.want)
		}
	}
}
