// Starts mongo-java-server for mongo-java-server.sh: the H2 (MVStore file) or
// the memory backend, bound to one address, reporting a wire version that
// current pymongo accepts, (H2) committing every write before replying, and
// finding a document by its `_id` index whenever a filter holds an `_id`.
//
//   java -cp 'lib/*:classes' Launcher --host H --port P --backend h2|memory
//        [--file PATH] [--wire-version 9] [--fsync] [--no-id-index]

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.Document;
import io.netty.channel.Channel;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import org.h2.mvstore.MVStore;

public final class Launcher {

    // mongo-java-server 1.47 reports at most wire version 8 (MongoDB 4.2);
    // pymongo >= 4.14 refuses servers below 9 (MongoDB 4.4). The commands the
    // project sends are the same on both, so only the number changes.
    private record Version(List<Integer> versionArray, int wireVersion) implements MongoVersion {
        @Override public List<Integer> getVersionArray() { return versionArray; }
        @Override public int getWireVersion() { return wireVersion; }
    }

    // ---- `_id` lookups ------------------------------------------------------
    //
    // mongo-java-server 1.47 takes an index only when a query's keys are exactly
    // the index's keys (AbstractUniqueIndex.canHandle): {_id: X} is a lookup,
    // but {_id: X, v: {$lt: 5}} (aggregate's hour update, alert's compare-and-swap
    // on rev) reads every document of the collection, ~2 s at 4,000 hour
    // documents. MongoDB looks such a filter up by `_id` too. The collections
    // below do that: when the filter has an `_id` condition the `_id` index can
    // answer alone (a value, or $in), they read the documents of those `_id`s only
    // and match the whole filter against them, as the library does after any
    // index lookup. Everything else (locking, updates, upserts, sorting) is the
    // library's own code, so per-document atomicity is unchanged.

    // --no-id-index turns the lookup off (the library as released), so that
    // tests/benchmarks/mjs_id_index.py can compare both in one run.
    static volatile boolean idIndex = true;

    // Documents matched against a filter, reported by serverStatus as MongoDB's
    // metrics.queryExecutor.scannedObjects: a test of the lookup that does not time.
    static final AtomicLong scannedObjects = new AtomicLong();

    // Positions of the documents the filter's `_id` condition names, or null
    // when the library's own choice should stand: no `_id` in the filter, `_id`
    // alone (the library takes its index then), or a condition the index cannot
    // answer (e.g. $gt).
    static <P> Iterable<P> idPositions(List<Index<P>> indexes, String idField, Document query) {
        if (!idIndex || idField == null || query.size() < 2 || !query.containsKey(idField)) {
            return null;
        }
        Document byId = new Document(idField, query.get(idField));
        for (Index<P> index : indexes) {
            if (index.isUnique() && index.getKeys().size() == 1
                    && index.getKeys().get(0).getKey().equals(idField) && index.canHandle(byId)) {
                return index.getPositions(byId);
            }
        }
        return null;
    }

    static Document withScanned(Document serverStatus) {
        Document metrics = (Document) serverStatus.computeIfAbsent("metrics", k -> new Document());
        metrics.put("queryExecutor", new Document("scannedObjects", scannedObjects.get()));
        return serverStatus;
    }

    static final class IdH2Collection extends H2Collection {
        IdH2Collection(MongoDatabase database, String name, CollectionOptions options, MVStore store,
                       String fullName, CursorRegistry cursors) {
            // the map names H2Database gives a collection's documents and metadata
            super(database, name, options, store.openMap("databases." + fullName),
                    store.openMap("meta." + fullName), cursors);
        }

        @Override
        protected QueryResult queryDocuments(Document query, Document orderBy, int skip, int limit,
                                             int batchSize, Document fields) {
            Iterable<Object> positions = idPositions(getIndexes(), getIdField(), query);
            return positions == null
                    ? super.queryDocuments(query, orderBy, skip, limit, batchSize, fields)
                    : matchDocuments(query, positions, orderBy, skip, limit, batchSize, fields);
        }

        @Override
        protected boolean documentMatchesQuery(Document document, Document query) {
            scannedObjects.incrementAndGet();
            return super.documentMatchesQuery(document, query);
        }
    }

    static final class IdMemoryCollection extends MemoryCollection {
        IdMemoryCollection(MongoDatabase database, String name, CollectionOptions options,
                           CursorRegistry cursors) {
            super(database, name, options, cursors);
        }

        @Override
        protected QueryResult queryDocuments(Document query, Document orderBy, int skip, int limit,
                                             int batchSize, Document fields) {
            Iterable<Integer> positions = idPositions(getIndexes(), getIdField(), query);
            return positions == null
                    ? super.queryDocuments(query, orderBy, skip, limit, batchSize, fields)
                    : matchDocuments(query, positions, orderBy, skip, limit, batchSize, fields);
        }

        @Override
        protected boolean documentMatchesQuery(Document document, Document query) {
            scannedObjects.incrementAndGet();
            return super.documentMatchesQuery(document, query);
        }
    }

    static final class IdMemoryBackend extends MemoryBackend {
        @Override
        public MemoryDatabase openOrCreateDatabase(String databaseName) {
            return new MemoryDatabase(databaseName, getCursorRegistry()) {
                @Override
                protected MemoryCollection openOrCreateCollection(String name, CollectionOptions options) {
                    return new IdMemoryCollection(this, name, options, cursorRegistry);
                }
            };
        }

        @Override
        public Document getServerStatus() {
            return withScanned(super.getServerStatus());
        }
    }

    // MVStore's own auto-commit writes changes about once a second, so a
    // SIGKILL loses the writes of the last second although they were
    // acknowledged. Here a command that changed something returns only after
    // a commit that contains its changes. The read-write lock keeps a commit
    // from capturing a write half done (a document stored, its unique index
    // not yet), and a commit covers every write finished before it, so
    // concurrent writers share commits.
    static final class DurableH2Backend extends H2Backend {
        private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
        private final boolean fsync;

        DurableH2Backend(MVStore store, boolean fsync) {
            super(store);
            this.fsync = fsync;
        }

        @Override
        protected MongoDatabase openOrCreateDatabase(String databaseName) {
            // H2Database's constructor already opens the existing collections, through
            // this override, before a subclass field could be set: the store comes
            // from the enclosing backend (javac sets the enclosing instance first).
            return new H2Database(databaseName, getMvStore(), getCursorRegistry()) {
                @Override
                protected MongoCollection<Object> openOrCreateCollection(String name,
                                                                        CollectionOptions options) {
                    return new IdH2Collection(this, name, options, getMvStore(),
                            getFullCollectionNamespace(name), cursorRegistry);
                }
            };
        }

        @Override
        public Document getServerStatus() {
            return withScanned(super.getServerStatus());
        }

        @Override
        public Document handleCommand(Channel channel, String database, String command, Document query) {
            lock.readLock().lock();
            try {
                return super.handleCommand(channel, database, command, query);
            } finally {
                lock.readLock().unlock();
                commitIfChanged();
            }
        }

        @Override
        public void dropDatabase(String database) {
            lock.readLock().lock();
            try {
                super.dropDatabase(database);
            } finally {
                lock.readLock().unlock();
                commitIfChanged();
            }
        }

        private void commitIfChanged() {
            MVStore store = getMvStore();
            // a command run from inside another holds the read lock still: the
            // outer one commits (a read lock cannot be upgraded to the write lock)
            if (lock.getReadHoldCount() > 0 || !store.hasUnsavedChanges()) {
                return;
            }
            lock.writeLock().lock();
            try {
                if (store.hasUnsavedChanges()) {  // else another writer's commit took ours along
                    store.commit();
                    if (fsync) {
                        store.sync();
                    }
                }
            } finally {
                lock.writeLock().unlock();
            }
        }
    }

    public static void main(String[] args) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--fsync") || a.equals("--no-id-index")) {
                opts.put(a.substring(2), "true");
            } else if (a.startsWith("--") && i + 1 < args.length) {
                opts.put(a.substring(2), args[++i]);
            } else {
                System.err.println("unexpected argument: " + a);
                System.exit(2);
            }
        }
        String host = opts.getOrDefault("host", "127.0.0.1");
        int port = Integer.parseInt(opts.getOrDefault("port", "27018"));
        String backendName = opts.getOrDefault("backend", "h2");
        int wire = Integer.parseInt(opts.getOrDefault("wire-version", "9"));

        MongoBackend backend;
        switch (backendName) {
            case "h2" -> {
                String file = opts.get("file");
                if (file == null) {
                    System.err.println("--backend h2 needs --file PATH");
                    System.exit(2);
                }
                MVStore store = new MVStore.Builder().fileName(file).autoCommitDisabled().open();
                backend = new DurableH2Backend(store, opts.containsKey("fsync"));
            }
            case "memory" -> backend = new IdMemoryBackend();
            default -> {
                System.err.println("--backend must be h2 or memory, not " + backendName);
                System.exit(2);
                return;
            }
        }
        backend.version(new Version(List.of(4, 4, 0), wire));
        idIndex = !opts.containsKey("no-id-index");

        MongoServer server = new MongoServer(backend);
        // SIGTERM: stop accepting, then close the backend (H2 writes its last commit).
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdown, "shutdown"));
        try {
            server.bind(host, port);
        } catch (RuntimeException e) {
            // Netty's threads would keep the JVM running without a listener (BindException).
            System.err.println("mongo-java-server cannot listen on " + host + ":" + port + ": " + e);
            System.exit(1);
        }
        System.err.println("mongo-java-server listening on " + host + ":" + port
                + " (backend " + backendName + ", wire version " + wire
                + ", _id lookups " + (idIndex ? "for every filter with an _id" : "as released") + ")");
    }
}
