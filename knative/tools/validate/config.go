package main

import (
	_ "embed"
	"fmt"
	"os"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"knative.dev/pkg/configmap"
	"sigs.k8s.io/yaml"
)

const (
	servingNamespace  = "knative-serving"
	eventingNamespace = "knative-eventing"
)

// The configuration ConfigMaps of a fresh Knative 1.23 installation: the
// webhooks' behaviour depends on them (e.g. Eventing's delivery-timeout feature
// flag decides whether a Trigger may set delivery.timeout at all).
//
//go:embed release-config.yaml
var releaseConfig string

// configMaps holds the Knative configuration the webhooks would load, keyed by
// namespace/name, and collects the errors their constructors report.
type configMaps struct {
	byName map[string]*corev1.ConfigMap
	errors []string
}

func newConfigMaps() (*configMaps, error) {
	c := &configMaps{byName: map[string]*corev1.ConfigMap{}}
	if err := c.add("release-config.yaml (embedded)", releaseConfig, true); err != nil {
		return nil, err
	}
	return c, nil
}

// addFile replaces the release defaults with a cluster's own ConfigMaps; a
// ConfigMap this tool does not use is an error (a typo would go unnoticed).
func (c *configMaps) addFile(path string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return c.add(path, string(text), false)
}

func (c *configMaps) add(source, text string, initial bool) error {
	docs, err := splitDocuments(strings.NewReader(text))
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	for _, doc := range docs {
		// `kubectl get configmap A B -o yaml` prints a List of them.
		var list corev1.ConfigMapList
		if err := yaml.Unmarshal(doc.raw, &list); err == nil && list.Kind == "List" {
			if err := yaml.UnmarshalStrict(doc.raw, &list); err != nil {
				return fmt.Errorf("%s: document %d: %w", source, doc.index, err)
			}
			for i := range list.Items {
				if err := c.put(&list.Items[i], initial); err != nil {
					return fmt.Errorf("%s: document %d: item %d: %w", source, doc.index, i+1, err)
				}
			}
			continue
		}
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict(doc.raw, &cm); err != nil {
			return fmt.Errorf("%s: document %d: %w", source, doc.index, err)
		}
		if err := c.put(&cm, initial); err != nil {
			return fmt.Errorf("%s: document %d: %w", source, doc.index, err)
		}
	}
	return nil
}

func (c *configMaps) put(cm *corev1.ConfigMap, initial bool) error {
	if cm.Kind != "ConfigMap" {
		return fmt.Errorf("kind %q, want ConfigMap", cm.Kind)
	}
	key := cm.Namespace + "/" + cm.Name
	if _, known := c.byName[key]; !initial && !known {
		return fmt.Errorf("ConfigMap %s is not one the webhooks read (known: %s)",
			key, strings.Join(c.names(), ", "))
	}
	c.byName[key] = cm
	return nil
}

func (c *configMaps) names() []string {
	names := make([]string, 0, len(c.byName))
	for key := range c.byName {
		names = append(names, key)
	}
	sort.Strings(names)
	return names
}

func (c *configMaps) get(namespace, name string) (*corev1.ConfigMap, error) {
	cm, ok := c.byName[namespace+"/"+name]
	if !ok {
		return nil, fmt.Errorf("no ConfigMap %s/%s in release-config.yaml", namespace, name)
	}
	return cm, nil
}

// logger is what a config store reports a ConfigMap it cannot parse to; the
// webhook would crash (Fatalf) or keep its previous config (Errorf), this tool
// refuses to run with a configuration it did not load.
func (c *configMaps) logger(component string) configmap.Logger {
	return &storeLogger{configs: c, component: component}
}

func (c *configMaps) err() error {
	if len(c.errors) == 0 {
		return nil
	}
	return fmt.Errorf("cannot load the Knative configuration:\n  %s", strings.Join(c.errors, "\n  "))
}

type storeLogger struct {
	configs   *configMaps
	component string
}

func (l *storeLogger) Debugf(string, ...interface{}) {}
func (l *storeLogger) Infof(string, ...interface{})  {}
func (l *storeLogger) Errorf(format string, args ...interface{}) {
	l.configs.errors = append(l.configs.errors, l.component+": "+fmt.Sprintf(format, args...))
}
func (l *storeLogger) Fatalf(format string, args ...interface{}) { l.Errorf(format, args...) }
