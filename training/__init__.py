"""Desktop kit: train, evaluate and export the mask classifier. May import TensorFlow; the appliance never does."""
