// Labels sent the way a plain Java service sends them: a KafkaProducer with default settings
// (its partitioner hashes the key with murmur2), keyed by event_id. Used by the integration
// test of the monitor's join; compiled with javac against the broker's own kafka-clients jar.
//
// usage: java LabelProducer BOOTSTRAP TOPIC FILE   (FILE: one "event_id<TAB>json" per line)

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public final class LabelProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", StringSerializer.class.getName());
        List<String> lines = Files.readAllLines(Paths.get(args[2]), StandardCharsets.UTF_8);
        AtomicReference<Exception> failed = new AtomicReference<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (String line : lines) {
                int tab = line.indexOf('\t');
                ProducerRecord<String, String> record =
                        new ProducerRecord<>(args[1], line.substring(0, tab), line.substring(tab + 1));
                producer.send(record, (metadata, error) -> {
                    if (error != null) {
                        failed.compareAndSet(null, error);
                    }
                });
            }
            producer.flush();
        }
        if (failed.get() != null) {
            System.err.println("send failed: " + failed.get());
            System.exit(1);
        }
        System.out.println("sent " + lines.size());
    }
}
