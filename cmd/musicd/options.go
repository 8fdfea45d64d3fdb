package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// envPrefix starts every environment variable musicd reads.
const envPrefix = "MUSIC_"

// option is one settable scalar of Config, found by walking its YAML tags. Each option is reachable
// from the config file (its YAML path), the environment and a flag; see docs/decisions/0002.
type option struct {
	path  string // YAML path: "api.listen"
	flag  string // "api.listen"; '_' in a key becomes '-'
	env   string // "MUSIC_API_LISTEN"
	help  string
	index []int // field index path from Config
	typ   reflect.Type
}

var durationType = reflect.TypeFor[time.Duration]()

// options lists every scalar field of Config in declaration order. Lists of structs (sources)
// have no flag: they are set in the config file only.
func options() []option {
	var out []option
	var walk func(t reflect.Type, index []int, path string)
	walk = func(t reflect.Type, index []int, path string) {
		for i := range t.NumField() {
			f := t.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if key == "" || key == "-" {
				continue
			}
			p := key
			if path != "" {
				p = path + "." + key
			}
			idx := append(slices.Clone(index), i)
			switch {
			case f.Type.Kind() == reflect.Struct:
				walk(f.Type, idx, p)
			case f.Type.Kind() == reflect.Map,
				f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() != reflect.String:
				continue // maps and lists of structs: config file only
			default:
				out = append(out, option{
					path:  p,
					flag:  strings.ReplaceAll(p, "_", "-"),
					env:   envPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(p)),
					help:  f.Tag.Get("help"),
					index: idx,
					typ:   f.Type,
				})
			}
		}
	}
	walk(reflect.TypeFor[Config](), nil, "")
	return out
}

// set parses s into the option's field of cfg.
func (o option) set(cfg *Config, s string) error {
	v := reflect.ValueOf(cfg).Elem().FieldByIndex(o.index)
	switch {
	case o.typ == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (e.g. 500ms, 5s, 1m)", s)
		}
		v.SetInt(int64(d))
	case o.typ.Kind() == reflect.String:
		v.SetString(s)
	case o.typ.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		v.SetBool(b)
	case o.typ.Kind() >= reflect.Int && o.typ.Kind() <= reflect.Int64:
		n, err := strconv.ParseInt(s, 10, o.typ.Bits())
		if err != nil {
			return fmt.Errorf("%q is not an integer of %d bits", s, o.typ.Bits())
		}
		v.SetInt(n)
	case o.typ.Kind() >= reflect.Uint && o.typ.Kind() <= reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, o.typ.Bits())
		if err != nil {
			return fmt.Errorf("%q is not an unsigned integer of %d bits", s, o.typ.Bits())
		}
		v.SetUint(n)
	case o.typ.Kind() == reflect.Slice && o.typ.Elem().Kind() == reflect.String:
		var list []string
		for _, item := range strings.Split(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		v.Set(reflect.ValueOf(list))
	default:
		return fmt.Errorf("unsupported option type %s", o.typ) // a programming error, caught by tests
	}
	return nil
}

// valueString renders the option's current value in cfg, for --help.
func (o option) valueString(cfg *Config) string {
	v := reflect.ValueOf(cfg).Elem().FieldByIndex(o.index)
	if o.typ.Kind() == reflect.Slice {
		return strings.Join(v.Interface().([]string), ",")
	}
	return fmt.Sprint(v.Interface())
}

// typeName is the placeholder shown in --help.
func (o option) typeName() string {
	switch {
	case o.typ == durationType:
		return "duration"
	case o.typ.Kind() == reflect.Slice:
		return "list"
	case o.typ.Kind() == reflect.Bool:
		return "bool"
	case o.typ.Kind() == reflect.String:
		return "string"
	default:
		return "int"
	}
}

// errVersion asks main to print the version and exit 0.
var errVersion = errors.New("version requested")

// rawFlag records a flag's values in order; they are applied after the file and the environment.
type rawFlag struct {
	name   string
	isBool bool
	seen   *[]flagValue
}

type flagValue struct{ name, value string }

func (r rawFlag) String() string { return "" }
func (r rawFlag) Set(s string) error {
	*r.seen = append(*r.seen, flagValue{r.name, s})
	return nil
}
func (r rawFlag) IsBoolFlag() bool { return r.isBool }

// loadConfig builds the configuration from defaults, then the YAML file (--config or
// MUSIC_CONFIG), then MUSIC_* variables, then flags, and validates the result. Errors are one line
// and name the field (and its source). It returns flag.ErrHelp for --help and errVersion for
// --version.
func loadConfig(args, environ []string) (Config, []string, error) {
	cfg := DefaultConfig()
	opts := options()
	var seen []flagValue
	fs := flag.NewFlagSet("musicd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	configPath := fs.String("config", "", "")
	version := fs.Bool("version", false, "")
	for _, o := range opts {
		fs.Var(rawFlag{name: o.flag, isBool: o.typ.Kind() == reflect.Bool, seen: &seen}, o.flag, o.help)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, nil, err
		}
		return cfg, nil, fmt.Errorf("%v (see musicd --help)", err)
	}
	if fs.NArg() > 0 {
		return cfg, nil, fmt.Errorf("unexpected argument %q (see musicd --help)", fs.Arg(0))
	}
	if *version {
		return cfg, nil, errVersion
	}

	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, envPrefix) {
			env[k] = v
		}
	}
	path := *configPath
	if path == "" {
		path = env[envPrefix+"CONFIG"]
	}
	if path != "" {
		if err := loadFile(path, &cfg); err != nil {
			return cfg, nil, err
		}
	}

	var warnings []string
	known := map[string]bool{envPrefix + "CONFIG": true}
	for _, o := range opts {
		known[o.env] = true
		if v, ok := env[o.env]; ok {
			if err := o.set(&cfg, v); err != nil {
				return cfg, nil, fmt.Errorf("%s (%s): %w", o.path, o.env, err)
			}
		}
	}
	for k := range env {
		// MUSIC_DEV_* belong to deploy/dev's scripts, not to musicd.
		if !known[k] && !strings.HasPrefix(k, envPrefix+"DEV_") {
			warnings = append(warnings, "unknown environment variable "+k+" ignored")
		}
	}
	slices.Sort(warnings)

	byFlag := map[string]option{}
	for _, o := range opts {
		byFlag[o.flag] = o
	}
	for _, f := range seen {
		o := byFlag[f.name]
		if err := o.set(&cfg, f.value); err != nil {
			return cfg, nil, fmt.Errorf("%s (--%s): %w", o.path, o.flag, err)
		}
	}

	cfg.normalize()
	if err := cfg.Validate(); err != nil {
		return cfg, nil, fmt.Errorf("invalid configuration: %w", err)
	}
	return cfg, warnings, nil
}

// loadFile decodes the YAML file at path over cfg. Unknown keys are errors that name the key's
// full path and line; so are values of the wrong type.
func loadFile(path string, cfg *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config file %s: %s", path, oneLine(err.Error()))
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	keyAt := map[int]string{} // line -> path of the key on it, to name fields in decode errors
	if err := checkKnown(doc.Content[0], reflect.TypeFor[Config](), "", keyAt); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		msg := oneLine(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:"))
		var line int
		if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil && keyAt[line] != "" {
			msg = fmt.Sprintf("line %d: %s:%s", line, keyAt[line], strings.TrimPrefix(msg, fmt.Sprintf("line %d:", line)))
		}
		return fmt.Errorf("config file %s: %s", path, msg)
	}
	return nil
}

// checkKnown walks a YAML node against the struct type it decodes into and reports the first key
// that has no field, with its full path and line.
func checkKnown(n *yaml.Node, t reflect.Type, path string, keyAt map[int]string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			key, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if key != "" && key != "-" {
				fields[key] = t.Field(i).Type
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			ft, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("line %d: unknown field %q", k.Line, p)
			}
			keyAt[k.Line] = p
			if err := checkKnown(n.Content[i+1], ft, p, keyAt); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := path + "." + n.Content[i].Value
			keyAt[n.Content[i].Line] = p
			if err := checkKnown(n.Content[i+1], t.Elem(), p, keyAt); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			if err := checkKnown(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), keyAt); err != nil {
				return err
			}
		}
	}
	return nil // type mismatches are reported by the decoder
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// printUsage writes --help: every option with its type, default and environment variable.
func printUsage(w io.Writer) {
	def := DefaultConfig()
	fmt.Fprintf(w, `musicd: multi-site state coordination daemon.

Usage: musicd [--config FILE] [--OPTION VALUE ...]

With no configuration musicd runs in embedded mode: a local data directory, an embedded NATS
server, and REST on 127.0.0.1:8080. Settings come from, in increasing precedence: built-in
defaults, the YAML config file, MUSIC_* environment variables, flags. Every option below has
all three forms: --api.listen X, MUSIC_API_LISTEN=X, and "api: {listen: X}" in the file.
Lists (comma-separated on flags and in the environment) are YAML lists in the file. Database
sources (sources:) are set in the config file only; see deploy/musicd.example.yaml.

  --config FILE, MUSIC_CONFIG
        YAML configuration file
  --version
        print the version and exit
  --help
        print this help and exit

`)
	for _, o := range options() {
		d := o.valueString(&def)
		if d == "" {
			d = "none"
		}
		fmt.Fprintf(w, "  --%s %s, %s\n        %s (default %s)\n", o.flag, o.typeName(), o.env, o.help, d)
	}
}
