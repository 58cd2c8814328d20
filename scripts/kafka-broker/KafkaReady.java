// Readiness probe used by scripts/kafka (compiled once into the jar cache, run with the broker's
// own kafka-clients jar on the classpath).
//
//   java -cp <lib>/*:<classes> KafkaReady <bootstrap> <min-brokers> <timeout-seconds> [node-id|-] [pid...]
//
// Succeeds (exit 0) once an Admin client against <bootstrap> sees at least <min-brokers> live
// brokers (and, if a node id is given, that broker among them), each of them (or just that one)
// answers a request sent to it alone, and topics can be listed.
// Exit 2: timed out. Exit 3: one of the given broker PIDs died while waiting. Exit 64: bad usage.

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.config.ConfigResource;

public final class KafkaReady {
    private KafkaReady() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 3) {
            System.err.println("usage: KafkaReady <bootstrap> <min-brokers> <timeout-seconds> [node-id|-] [pid...]");
            System.exit(64);
        }
        String bootstrap = args[0];
        int minBrokers = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));
        int wantNode = (args.length > 3 && !args[3].equals("-")) ? Integer.parseInt(args[3]) : -1;
        long[] pids = new long[Math.max(0, args.length - 4)];
        for (int i = 4; i < args.length; i++) {
            pids[i - 4] = Long.parseLong(args[i]);
        }

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "keel-kafka-ready");

        String last = "no attempt yet";
        Admin admin = Admin.create(props);
        try {
            while (System.nanoTime() < deadline) {
                for (long pid : pids) {
                    boolean alive = ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false);
                    if (!alive) {
                        System.err.println("broker process " + pid + " exited while waiting for it");
                        System.exit(3);
                    }
                }
                try {
                    Collection<Node> nodes = admin.describeCluster().nodes().get(5, TimeUnit.SECONDS);
                    Set<Integer> ids = nodes.stream().map(Node::id).collect(Collectors.toSet());
                    if (ids.size() < minBrokers) {
                        last = "live brokers " + ids + ", want " + minBrokers;
                    } else if (wantNode >= 0 && !ids.contains(wantNode)) {
                        last = "live brokers " + ids + ", node " + wantNode + " not among them yet";
                    } else {
                        // describeCluster can list a broker that was just killed (until its
                        // session times out), so ask every broker something only it answers.
                        List<ConfigResource> brokers = new ArrayList<>();
                        for (int id : ids) {
                            if (wantNode < 0 || id == wantNode) {
                                brokers.add(new ConfigResource(ConfigResource.Type.BROKER, Integer.toString(id)));
                            }
                        }
                        admin.describeConfigs(brokers).all().get(5, TimeUnit.SECONDS);
                        Set<String> topics = admin.listTopics().names().get(5, TimeUnit.SECONDS);
                        System.out.println("ready: brokers " + ids + ", " + topics.size() + " topic(s)");
                        return;
                    }
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    last = cause.getClass().getSimpleName() + ": " + cause.getMessage();
                }
                Thread.sleep(500);
            }
        } finally {
            admin.close(Duration.ofSeconds(2));
        }
        System.err.println("not ready in time: " + last);
        System.exit(2);
    }
}
