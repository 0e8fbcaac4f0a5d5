// Package deploy_test checks the files that deploy pg-invalidator against the
// Kubernetes API types and against the real binary, on a machine without a
// cluster:
//
//   - every manifest in kubernetes/ decodes strictly into its k8s.io/api
//     type, so that a misspelled or unknown field fails;
//   - the manifests agree with each other (volumes, Secret, ports, labels);
//   - every command line that a deploy file gives the binary (the Deployment's
//     args, the systemd unit's ExecStart, the docker-compose commands, the
//     Dockerfile's CMD) starts the binary, whose flags therefore exist and
//     whose rules file loads, and the probe paths answer as the probes expect.
package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// manifest is one YAML document of a Kubernetes manifest file.
type manifest struct {
	file string
	line int // where the document starts, from 1
	kind string
	name string
	obj  any
}

// kinds are the API types the manifests may use. A kind outside this table
// fails: the test would otherwise check nothing about it.
var kinds = map[string]func() any{
	"v1/ConfigMap":       func() any { return new(corev1.ConfigMap) },
	"v1/Secret":          func() any { return new(corev1.Secret) },
	"v1/Service":         func() any { return new(corev1.Service) },
	"apps/v1/Deployment": func() any { return new(appsv1.Deployment) },
}

func kindNames() string {
	var names []string
	for k := range kinds {
		names = append(names, k[strings.LastIndex(k, "/")+1:])
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeFile decodes every document of a manifest file strictly. Errors name
// the file and line.
func decodeFile(path string) ([]manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []manifest
	line := 1
	rest := string(data)
	for {
		doc, next, found := rest, "", false
		if loc := docSeparator.FindStringIndex(rest); loc != nil {
			doc, next, found = rest[:loc[0]], rest[loc[1]:], true
		}
		if strings.TrimSpace(stripComments(doc)) != "" {
			m, err := decodeDoc(path, line, doc)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
		}
		if !found {
			break
		}
		line += strings.Count(rest[:len(rest)-len(next)], "\n")
		rest = next
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no Kubernetes object in the file", path)
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

var (
	unknownField = regexp.MustCompile(`unknown field "([^"]+)"`)
	// json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32
	wrongType = regexp.MustCompile(`cannot unmarshal (\S+) into Go struct field \S*?\.(\S+) of type (\S+)`)
	yamlLine  = regexp.MustCompile(`line (\d+): (.*)`)
)

func decodeDoc(path string, line int, doc string) (manifest, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
		return manifest{}, docError(path, line, doc, err)
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return manifest{}, fmt.Errorf("%s:%d: apiVersion %q kind %q is not a kind this check knows (%s); add its k8s.io/api type to kinds in deploy_test.go",
			path, line+keyLine(doc, "kind"), tm.APIVersion, tm.Kind, kindNames())
	}
	obj := newObj()
	if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
		return manifest{}, fmt.Errorf("%w in %s %s %q", docError(path, line, doc, err), tm.APIVersion, tm.Kind, tm.Metadata.Name)
	}
	return manifest{file: path, line: line, kind: tm.Kind, name: tm.Metadata.Name, obj: obj}, nil
}

// docError turns a decoding error into "file:line: what", finding the line
// from the field the error names.
func docError(path string, line int, doc string, err error) error {
	msg := err.Error()
	if m := unknownField.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%d: unknown field %q (misspelled, or not a field of this kind)", path, line+keyLine(doc, m[1]), m[1])
	}
	if m := wrongType.FindStringSubmatch(msg); m != nil {
		fields := strings.Split(m[2], ".")
		return fmt.Errorf("%s:%d: %s is a %s, want %s", path, line+keyLine(doc, fields...), m[2], m[1], m[3])
	}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return fmt.Errorf("%s:%d: %s", path, line+n-1, m[2])
	}
	return fmt.Errorf("%s:%d: %v", path, line, err)
}

// keyLine returns the 0-based line of the document on which the key path
// appears: each key is looked for after the line of the one before it.
func keyLine(doc string, keys ...string) int {
	lines := strings.Split(doc, "\n")
	at := 0
	for _, k := range keys {
		re := regexp.MustCompile(`^\s*(- +)?"?` + regexp.QuoteMeta(k) + `"?\s*:`)
		for i := at; i < len(lines); i++ {
			if re.MatchString(lines[i]) {
				at = i
				break
			}
		}
	}
	return at
}

func loadManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	var all []manifest
	for _, f := range files {
		ms, err := decodeFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ms...)
	}
	return all
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	got := map[string]int{}
	for _, m := range loadManifests(t) {
		got[m.kind]++
	}
	for _, kind := range []string{"ConfigMap", "Secret", "Service", "Deployment"} {
		if got[kind] != 1 {
			t.Errorf("%d %s objects in kubernetes/, want 1", got[kind], kind)
		}
	}
}

func TestStrictDecodeErrors(t *testing.T) {
	tests := []struct{ file, want string }{
		{"testdata/misspelled-field.yaml", `testdata/misspelled-field.yaml:21: unknown field "livenesProbe" (misspelled, or not a field of this kind) in apps/v1 Deployment "demo"`},
		{"testdata/wrong-type.yaml", `testdata/wrong-type.yaml:7: spec.replicas is a string, want int32 in apps/v1 Deployment "demo"`},
		{"testdata/unknown-kind.yaml", `testdata/unknown-kind.yaml:5: apiVersion "apps/v1" kind "Deploymnet" is not a kind this check knows (ConfigMap, Deployment, Secret, Service); add its k8s.io/api type to kinds in deploy_test.go`},
		{"testdata/duplicate-key.yaml", `testdata/duplicate-key.yaml:10: key "name" already set in map in v1 ConfigMap "demo"`},
		{"testdata/second-document.yaml", `testdata/second-document.yaml:15: unknown field "selectr" (misspelled, or not a field of this kind) in v1 Service "demo"`},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			_, err := decodeFile(tt.file)
			if err == nil {
				t.Fatalf("decoded without error, want %q", tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// The one Deployment, and what its pieces refer to, must fit together.
func TestKubernetesManifestsAgree(t *testing.T) {
	var (
		deploy     *appsv1.Deployment
		configMaps = map[string]*corev1.ConfigMap{}
		secrets    = map[string]*corev1.Secret{}
		services   []*corev1.Service
	)
	for _, m := range loadManifests(t) {
		switch o := m.obj.(type) {
		case *appsv1.Deployment:
			deploy = o
		case *corev1.ConfigMap:
			configMaps[o.Name] = o
		case *corev1.Secret:
			secrets[o.Name] = o
		case *corev1.Service:
			services = append(services, o)
		}
	}
	if deploy == nil {
		t.Fatal("no Deployment in kubernetes/")
	}
	pod := deploy.Spec.Template
	for k, v := range deploy.Spec.Selector.MatchLabels {
		if pod.Labels[k] != v {
			t.Errorf("Deployment selector %s=%s does not match the pod template's labels %v", k, v, pod.Labels)
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil && configMaps[v.ConfigMap.Name] == nil {
			t.Errorf("volume %s uses ConfigMap %q, which kubernetes/ does not define", v.Name, v.ConfigMap.Name)
		}
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	for _, e := range c.EnvFrom {
		if e.SecretRef != nil && secrets[e.SecretRef.Name] == nil {
			t.Errorf("envFrom uses Secret %q, which kubernetes/ does not define", e.SecretRef.Name)
		}
	}
	for name, s := range secrets {
		for _, key := range []string{"DATABASE_URL", "REDIS_URL"} {
			if s.StringData[key] == "" && len(s.Data[key]) == 0 {
				t.Errorf("Secret %s has no %s", name, key)
			}
		}
	}

	// --config must name a key of a ConfigMap mounted in the container.
	config := flagValue(c.Args, "config")
	if config == "" {
		t.Errorf("container args %q have no --config", c.Args)
	} else if !configMounted(config, c.VolumeMounts, volumes, configMaps) {
		t.Errorf("--config %s is not a key of a ConfigMap mounted in the container (mounts %v)", config, c.VolumeMounts)
	}

	// The probes and the Service reach the port --metrics-addr listens on,
	// on the pod's address, not only on loopback.
	addr := flagValue(c.Args, "metrics-addr")
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("--metrics-addr %q: %v", addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("--metrics-addr %s listens on loopback only; the kubelet probes the pod's address", addr)
	}
	port, _ := strconv.Atoi(portStr)
	named := map[string]int32{}
	for _, p := range c.Ports {
		named[p.Name] = p.ContainerPort
	}
	for what, probe := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			t.Errorf("%s is not an httpGet probe", what)
			continue
		}
		if got := resolvePort(probe.HTTPGet.Port.String(), named); got != port {
			t.Errorf("%s port %s is %d, but --metrics-addr listens on %d", what, probe.HTTPGet.Port.String(), got, port)
		}
	}
	if a := pod.Annotations["prometheus.io/port"]; a != "" && a != portStr {
		t.Errorf("annotation prometheus.io/port %s, but --metrics-addr listens on %s", a, portStr)
	}
	for _, s := range services {
		for k, v := range s.Spec.Selector {
			if pod.Labels[k] != v {
				t.Errorf("Service %s selects %s=%s, which the pods do not carry", s.Name, k, v)
			}
		}
		for _, p := range s.Spec.Ports {
			if got := resolvePort(p.TargetPort.String(), named); got != port {
				t.Errorf("Service %s targetPort %s is %d, but --metrics-addr listens on %d", s.Name, p.TargetPort.String(), got, port)
			}
		}
	}
}

// flagValue returns the value of --name (or -name) in args, or "".
func flagValue(args []string, name string) string {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func resolvePort(p string, named map[string]int32) int {
	if n, err := strconv.Atoi(p); err == nil {
		return n
	}
	return int(named[p])
}

func configMounted(path string, mounts []corev1.VolumeMount, volumes map[string]corev1.Volume, cms map[string]*corev1.ConfigMap) bool {
	for _, m := range mounts {
		v, ok := volumes[m.Name]
		if !ok || v.ConfigMap == nil || cms[v.ConfigMap.Name] == nil {
			continue
		}
		key, ok := strings.CutPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		if m.SubPath != "" {
			continue // a subPath mount is one file; not used here
		}
		if _, ok := cms[v.ConfigMap.Name].Data[key]; ok {
			return true
		}
	}
	return false
}

// commandLine is how one deploy file starts the binary.
type commandLine struct {
	where string   // file and what in it
	args  []string // after the program name
	rules string   // the rules file the deployment gives it
	// probes maps a path to the status it must answer while PostgreSQL is
	// unreachable (so the daemon runs but does not stream).
	probes map[string]int
}

// commandLines collects every command line the deploy files give the binary.
func commandLines(t *testing.T) []commandLine {
	t.Helper()
	exampleRules, err := os.ReadFile("../rules.toml")
	if err != nil {
		t.Fatal(err)
	}
	var out []commandLine

	// Kubernetes: the Deployment's args, with the ConfigMap's rules file.
	var cms []*corev1.ConfigMap
	var deploy *appsv1.Deployment
	for _, m := range loadManifests(t) {
		switch o := m.obj.(type) {
		case *corev1.ConfigMap:
			cms = append(cms, o)
		case *appsv1.Deployment:
			deploy = o
		}
	}
	if deploy == nil {
		t.Fatal("no Deployment in kubernetes/")
	}
	for _, c := range deploy.Spec.Template.Spec.Containers {
		cl := commandLine{where: "kubernetes/deployment.yaml container " + c.Name, args: append(c.Command, c.Args...), probes: map[string]int{}}
		config := flagValue(cl.args, "config")
		for _, cm := range cms {
			if v, ok := cm.Data[filepath.Base(config)]; ok {
				cl.rules = v
			}
		}
		if cl.rules == "" {
			t.Fatalf("%s: no ConfigMap holds %s", cl.where, config)
		}
		if p := c.LivenessProbe; p != nil && p.HTTPGet != nil {
			cl.probes[p.HTTPGet.Path] = http.StatusOK // the process runs
		}
		if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil {
			cl.probes[p.HTTPGet.Path] = http.StatusServiceUnavailable // it does not stream
		}
		if path := deploy.Spec.Template.Annotations["prometheus.io/path"]; path != "" {
			cl.probes[path] = http.StatusOK
		}
		out = append(out, cl)
	}

	// systemd: ExecStart, with the example rules its install steps copy.
	unit, err := os.ReadFile("systemd/pg-invalidator.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(unit), "\n") {
		v, ok := strings.CutPrefix(l, "ExecStart=")
		if !ok {
			continue
		}
		if strings.ContainsAny(v, `"'\$%`) {
			t.Fatalf("systemd/pg-invalidator.service: ExecStart has quoting or specifiers, which this test does not parse: %s", v)
		}
		fields := strings.Fields(strings.TrimLeft(v, "-@+!:"))
		out = append(out, commandLine{where: "systemd/pg-invalidator.service ExecStart", args: fields[1:], rules: string(exampleRules)})
	}

	// docker-compose: the pg-invalidator services' command, with ./rules.toml.
	for _, f := range []string{"../docker-compose.yml", "compose-ha/docker-compose.ha.yml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var compose struct {
			Services map[string]struct {
				Command any `json:"command"`
			} `json:"services"`
		}
		if err := yaml.Unmarshal(data, &compose); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for name, svc := range compose.Services {
			if name != "pg-invalidator" || svc.Command == nil {
				continue
			}
			var args []string
			switch c := svc.Command.(type) {
			case string:
				args = strings.Fields(c)
			case []any:
				for _, a := range c {
					args = append(args, fmt.Sprint(a))
				}
			}
			out = append(out, commandLine{where: f + " service " + name, args: args, rules: string(exampleRules)})
		}
	}

	// The Dockerfile's CMD, with the rules.toml it copies in.
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CMD\s+(\[.*\])\s*$`).FindSubmatch(df)
	if m == nil {
		t.Fatal("../Dockerfile has no CMD in JSON form")
	}
	var cmd []string
	if err := json.Unmarshal(m[1], &cmd); err != nil {
		t.Fatalf("../Dockerfile CMD: %v", err)
	}
	out = append(out, commandLine{where: "../Dockerfile CMD", args: cmd, rules: string(exampleRules)})
	return out
}

// Every command line starts the real binary: unknown flags, bad flag values
// and a rules file that does not load all stop it before it serves /healthz.
// PostgreSQL and Redis are addresses nothing listens on, so the daemon runs
// and waits for them; the probe paths must answer as the probes expect.
func TestCommandLinesStartTheBinary(t *testing.T) {
	bin := buildBinary(t)
	lines := commandLines(t)
	if len(lines) < 5 {
		t.Fatalf("found %d command lines, want at least 5 (Deployment, systemd, two compose files, Dockerfile)", len(lines))
	}
	for _, cl := range lines {
		t.Run(cl.where, func(t *testing.T) {
			t.Parallel()
			if len(cl.args) == 0 || cl.args[0] != "run" {
				t.Fatalf("args %q do not start with the run command", cl.args)
			}
			dir := t.TempDir()
			rules := filepath.Join(dir, "rules.toml")
			if err := os.WriteFile(rules, []byte(cl.rules), 0o644); err != nil {
				t.Fatal(err)
			}
			port := freePort(t)
			args := rewrite(cl.args, map[string]string{"config": rules, "metrics-addr": "127.0.0.1:" + strconv.Itoa(port)})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			// Nothing listens on port 1 of loopback.
			cmd.Env = append(os.Environ(), "DATABASE_URL=postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1",
				"REDIS_URL=redis://127.0.0.1:1/0")
			var out testenv.SyncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			base := "http://127.0.0.1:" + strconv.Itoa(port)
			probes := cl.probes
			if len(probes) == 0 {
				probes = map[string]int{"/healthz": http.StatusOK}
			}
			deadline := time.Now().Add(30 * time.Second)
			for path, want := range probes {
				for {
					got, err := get(base + path)
					if err == nil {
						if got != want {
							t.Errorf("GET %s answered %d, want %d", path, got, want)
						}
						break
					}
					select {
					case err := <-exited:
						t.Fatalf("pg-invalidator %s exited (%v) before serving %s:\n%s", strings.Join(args, " "), err, path, head(out.String(), 3))
					case <-time.After(50 * time.Millisecond):
					}
					if time.Now().After(deadline) {
						t.Fatalf("GET %s: no answer within 30s (%v):\n%s", path, err, head(out.String(), 20))
					}
				}
			}
		})
	}
}

// rewrite replaces the values of the named flags, and adds those missing,
// so that the daemon reads a local file and listens on a free loopback port.
func rewrite(args []string, values map[string]string) []string {
	out := slices.Clone(args)
	seen := map[string]bool{}
	for i := 0; i < len(out); i++ {
		name := strings.TrimLeft(out[i], "-")
		if !strings.HasPrefix(out[i], "-") {
			continue
		}
		if n, _, ok := strings.Cut(name, "="); ok {
			if v, ok := values[n]; ok {
				out[i] = "--" + n + "=" + v
				seen[n] = true
			}
			continue
		}
		if v, ok := values[name]; ok && i+1 < len(out) {
			out[i+1] = v
			seen[name] = true
			i++
		}
	}
	for _, n := range slices.Sorted(maps.Keys(values)) {
		if !seen[n] {
			out = append(out, "--"+n, values[n])
		}
	}
	return out
}

// head returns the first n lines of s.
func head(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

func get(url string) (int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildBinary builds cmd/pg-invalidator once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pginv-deploy-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pg-invalidator")
		if out, err := exec.Command("go", "build", "-o", binPath, "../cmd/pg-invalidator").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}
