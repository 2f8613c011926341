// Starts mongo-java-server for mongo-java-server.sh: the H2 (MVStore file) or
// the memory backend, bound to one address, reporting a wire version that
// current pymongo accepts, and (H2) committing every write before replying.
//
//   java -cp 'lib/*:classes' Launcher --host H --port P --backend h2|memory
//        [--file PATH] [--wire-version 9] [--fsync]

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.Document;
import io.netty.channel.Channel;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
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
            if (a.equals("--fsync")) {
                opts.put("fsync", "true");
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
            case "memory" -> backend = new MemoryBackend();
            default -> {
                System.err.println("--backend must be h2 or memory, not " + backendName);
                System.exit(2);
                return;
            }
        }
        backend.version(new Version(List.of(4, 4, 0), wire));

        MongoServer server = new MongoServer(backend);
        // SIGTERM: stop accepting, then close the backend (H2 writes its last commit).
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdown, "shutdown"));
        server.bind(host, port);
        System.err.println("mongo-java-server listening on " + host + ":" + port
                + " (backend " + backendName + ", wire version " + wire + ")");
    }
}
