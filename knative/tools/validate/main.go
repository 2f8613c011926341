// knative-validate runs Knative's own admission checks on manifests, offline.
//
//	knative-validate [-v] [-config FILE]... FILE...   (FILE "-" is standard input)
//
// Every Knative object in the (multi-document) YAML files is decoded into the Go
// type of the pinned Knative module and goes through what the API server would
// do on `kubectl apply` (a create): each mutating webhook's SetDefaults, then each
// validating webhook's Validate, with the contexts those webhooks build
// (apis.WithinCreate, the user, and the config stores: config-defaults,
// config-features, config-autoscaler, config-br-defaults, ...). The CRD schemas
// (kubeconform) catch wrong types and unknown fields; this catches what only the
// webhooks check: annotation values and ranges, containerConcurrency, timeouts,
// delivery options, Trigger filters, a KafkaSource's bootstrap servers...
//
// Errors go to stdout, one per line: FILE: document N: KIND NAMESPACE/NAME: [WEBHOOK] error.
// Exit status: 0 all valid, 1 an object is invalid, 2 the input could not be read.
// Non-Knative kinds (ConfigMap, Namespace, ...) are skipped; a Knative kind this
// tool has no webhook for is an error, so a new kind is not silently unchecked.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	_ "iot-telemetry/knative/tools/validate/quietlog"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"knative.dev/pkg/apis"
	webhookjson "knative.dev/pkg/webhook/json"
	"knative.dev/pkg/webhook/resourcesemantics"
	"sigs.k8s.io/yaml"
)

// The user the webhooks see (Serving records it in serving.knative.dev/creator).
var user = &authenticationv1.UserInfo{Username: "knative-validate"}

type document struct {
	index int // 1-based, counting non-empty documents
	raw   []byte
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

type report struct {
	verbose                            bool
	validated, skipped, errs, warnings int
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("knative-validate", flag.ContinueOnError)
	flags.SetOutput(stderr)
	verbose := flags.Bool("v", false, "also print every object that passed or was skipped")
	var configFiles stringList
	flags.Var(&configFiles, "config", "YAML file of Knative ConfigMaps (knative-serving/config-autoscaler, "+
		"knative-eventing/config-features, ...) replacing the release defaults; repeatable")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: knative-validate [-v] [-config FILE]... FILE... (- for standard input)")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if flags.NArg() == 0 {
		flags.Usage()
		return 2
	}

	configs, err := newConfigMaps()
	if err == nil {
		for _, path := range configFiles {
			if err = configs.addFile(path); err != nil {
				break
			}
		}
	}
	var hooks []webhook
	if err == nil {
		hooks, err = webhooks(configs)
	}
	if err != nil {
		fmt.Fprintf(stderr, "knative-validate: %v\n", err)
		return 2
	}

	rep := &report{verbose: *verbose}
	for _, path := range flags.Args() {
		if err := validateFile(path, hooks, rep, stdout); err != nil {
			fmt.Fprintf(stderr, "knative-validate: %s: %v\n", path, err)
			return 2
		}
	}
	fmt.Fprintf(stderr, "knative-validate: %d Knative objects validated, %d other documents skipped, "+
		"%d errors, %d warnings\n", rep.validated, rep.skipped, rep.errs, rep.warnings)
	if rep.errs > 0 {
		return 1
	}
	return 0
}

func splitDocuments(r io.Reader) ([]document, error) {
	reader := k8syaml.NewYAMLReader(bufio.NewReader(r))
	var docs []document
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		// A document of comments only (or a trailing ---) is no object.
		if j, err := yaml.YAMLToJSON(raw); err == nil && bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			continue
		}
		docs = append(docs, document{index: len(docs) + 1, raw: raw})
	}
}

func validateFile(path string, hooks []webhook, rep *report, out io.Writer) error {
	in, name := os.Stdin, "(stdin)" // "-": e.g. `kustomize build DIR | knative-validate -`
	if path != "-" {
		name = path
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	docs, err := splitDocuments(in)
	if err != nil {
		return err
	}
	for _, doc := range docs {
		validateDocument(fmt.Sprintf("%s: document %d", name, doc.index), doc.raw, hooks, rep, out)
	}
	return nil
}

func validateDocument(where string, raw []byte, hooks []webhook, rep *report, out io.Writer) {
	fail := func(what, msg string) {
		rep.errs++
		fmt.Fprintf(out, "%s: %s: %s\n", where, what, oneLine(msg))
	}
	body, err := yaml.YAMLToJSON(raw)
	if err != nil {
		fail("not YAML", err.Error())
		return
	}
	var h header
	if err := json.Unmarshal(body, &h); err != nil || h.APIVersion == "" || h.Kind == "" {
		fail("not a Kubernetes object", "apiVersion and kind are required")
		return
	}
	gvk := schema.FromAPIVersionAndKind(h.APIVersion, h.Kind)
	what := h.Kind + " " + h.Metadata.Name
	if h.Metadata.Namespace != "" {
		what = h.Kind + " " + h.Metadata.Namespace + "/" + h.Metadata.Name
	}

	var handlers []webhook
	for _, hook := range hooks {
		if _, ok := hook.types[gvk]; ok {
			handlers = append(handlers, hook)
		}
	}
	if len(handlers) == 0 {
		switch {
		case schemaOnlyKinds[gvk]:
			rep.skipped++
			rep.say(out, "%s: %s: skipped (%s has no webhook: the CRD schema is all)\n", where, what, gvk.Kind)
		case gvk.Group == "knative.dev" || strings.HasSuffix(gvk.Group, ".knative.dev"):
			fail(what, fmt.Sprintf("%s has no offline validation here: add its webhook type to "+
				"knative/tools/validate/webhooks.go", gvk))
		default:
			rep.skipped++
			rep.say(out, "%s: %s: skipped (not a Knative kind)\n", where, what)
		}
		return
	}

	// The API server runs every mutating webhook (each sees the previous one's
	// result), then every validating webhook on the final object.
	for _, hook := range handlers {
		obj, err := decode(hook, gvk, body, false)
		if err != nil {
			fail(what, fmt.Sprintf("[%s] cannot decode: %v", hook.name, err))
			return
		}
		ctx := apis.WithUserInfo(apis.WithinCreate(hook.defaultingCtx(context.Background())), user)
		if msg := guard(func() { obj.SetDefaults(ctx) }); msg != "" {
			fail(what, fmt.Sprintf("[%s] SetDefaults panicked: %s", hook.name, msg))
			return
		}
		if body, err = json.Marshal(obj); err != nil {
			fail(what, fmt.Sprintf("[%s] %v", hook.name, err))
			return
		}
	}
	before := rep.errs
	for _, hook := range handlers {
		obj, err := decode(hook, gvk, body, hook.strict)
		if err != nil {
			fail(what, fmt.Sprintf("[%s] cannot decode: %v", hook.name, err))
			continue
		}
		ctx := apis.WithUserInfo(apis.WithinCreate(hook.validationCtx(context.Background())), user)
		var result *apis.FieldError
		if msg := guard(func() { result = obj.Validate(ctx) }); msg != "" {
			fail(what, fmt.Sprintf("[%s] Validate panicked: %s", hook.name, msg))
			continue
		}
		for _, e := range result.Filter(apis.ErrorLevel).WrappedErrors() {
			fail(what, fmt.Sprintf("[%s] %s", hook.name, e.Error()))
		}
		for _, w := range result.Filter(apis.WarningLevel).WrappedErrors() {
			rep.warnings++
			fmt.Fprintf(out, "%s: %s: [%s] warning: %s\n", where, what, hook.name, oneLine(w.Error()))
		}
	}
	rep.validated++
	if rep.errs == before {
		names := make([]string, len(handlers))
		for i, hook := range handlers {
			names[i] = hook.name
		}
		rep.say(out, "%s: %s: valid (%s)\n", where, what, strings.Join(names, ", "))
	}
}

func decode(hook webhook, gvk schema.GroupVersionKind, body []byte, strict bool) (resourcesemantics.GenericCRD, error) {
	obj := hook.types[gvk].DeepCopyObject().(resourcesemantics.GenericCRD)
	return obj, webhookjson.Decode(body, obj, strict)
}

// guard runs f and returns what it panicked with, if it did: a webhook would
// answer the request with an error rather than take the process down.
func guard(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}

func (r *report) say(out io.Writer, format string, args ...interface{}) {
	if r.verbose {
		fmt.Fprintf(out, format, args...)
	}
}

// oneLine keeps one finding per output line (a FieldError puts its details on
// a line of their own).
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " | ")), " ")
}
